"""The reference's training manifest (DESIGN.md section 9).

CSV columns (utils/dataset.py of the ShotStream code):

    shot_num_from_caption,json_path,video_path,frame_number
    5,demo/data/sample/0001.json,demo/data/sample/0001.mp4,"[[0, 56], [56,114], ...]"

Caption JSON: {"global_caption": ..., "shot1": ..., "shotN": ...}. Relative
paths are tried against the CSV's folder first, then the working directory.
Every path may be a URL (gs://...): files are read through etils.epath.
Rows that cannot be used are skipped and counted, never fatal.
"""
from __future__ import annotations

import ast
import csv
import dataclasses
import io
import json
import logging
import os

from shotstream_jax.checkpoint import as_path
from shotstream_jax.text import shot_prompt

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Clip:
    video: str
    ranges: tuple[tuple[int, int], ...]   # [start, end) pixel frames per shot
    prompts: tuple[str, ...]              # one per shot: text.shot_prompt(global, i, shot caption)


def _resolve(path: str, base: str) -> str:
    """A row's path: absolute or a URL as it is, else next to the CSV (`base`, maybe a URL) if there,
    else from the working directory."""
    if os.path.isabs(path) or "://" in path:
        return path
    near = as_path(base) / path
    return str(near) if near.exists() else os.path.abspath(path)


def _parse_row(row: dict, base: str) -> Clip:
    """One CSV row -> Clip; raises ValueError naming what is wrong."""
    for col in ("json_path", "video_path", "frame_number"):
        if not row.get(col):
            raise ValueError(f"column {col!r} is empty")
    video = _resolve(row["video_path"], base)
    if not as_path(video).is_file():
        raise ValueError(f"video {video} does not exist")
    try:
        ranges = tuple((int(a), int(b)) for a, b in ast.literal_eval(row["frame_number"]))
    except (ValueError, SyntaxError, TypeError) as e:
        raise ValueError(f"frame_number {row['frame_number']!r} is not a list of [start, end] pairs ({e})")
    if not ranges or any(b <= a or a < 0 for a, b in ranges) or any(
            ranges[i][1] > ranges[i + 1][0] for i in range(len(ranges) - 1)):
        raise ValueError(f"frame_number {ranges} must be ascending, non-empty [start, end) ranges")
    path = _resolve(row["json_path"], base)
    try:
        caps = json.loads(as_path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"caption file {path} is unreadable ({e})")
    shots = [caps.get(f"shot{i + 1}", "") for i in range(len(ranges))]
    if not isinstance(caps.get("global_caption"), str) or not caps["global_caption"].strip() or not all(
            isinstance(s, str) and s.strip() for s in shots):
        raise ValueError(f"caption file {path} lacks a non-empty global_caption or shot1..shot{len(ranges)}")
    prompts = tuple(shot_prompt(caps["global_caption"], i, s) for i, s in enumerate(shots))
    return Clip(video=video, ranges=ranges, prompts=prompts)


def write_manifest(path: str, rows) -> str:
    """Write rows (shot count, caption JSON path, video path, [[start, end], ...]) as the CSV above; returns path."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["shot_num_from_caption", "json_path", "video_path", "frame_number"])
        w.writerows([n, caps, video, json.dumps([list(r) for r in ranges])] for n, caps, video, ranges in rows)
    return path


def read_manifest(path: str, min_shots: int = 2) -> tuple[list[Clip], int]:
    """All usable clips of a manifest with at least `min_shots` shots, and how many rows were skipped."""
    csv_path = as_path(path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found; set --config.data.manifest to the training CSV")
    base = str(csv_path.parent)
    clips, skipped = [], 0
    with io.StringIO(csv_path.read_text(), newline="") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            try:
                clip = _parse_row(row, base)
                if len(clip.ranges) < min_shots:
                    raise ValueError(f"{len(clip.ranges)} shots, this stage needs {min_shots}")
                clips.append(clip)
            except ValueError as e:
                skipped += 1
                log.warning("%s line %d skipped: %s", path, n, e)
    if skipped:
        log.warning("%s: skipped %d broken rows, kept %d", path, skipped, len(clips))
    if not clips:
        raise ValueError(f"{path}: no usable rows ({skipped} skipped); see the warnings above")
    return clips, skipped
