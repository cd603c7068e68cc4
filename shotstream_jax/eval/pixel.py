"""Metrics of generated multi-shot videos computed from pixels alone (no feature network),
and the test-set helpers of `shotstream-eval --testset`.

The paper's Table 1 scores, with DINOv2 / CLIP / aesthetic-head features, are in
`eval.table1`. Here:
  * `transition_control`: shot-cut accuracy, the F1 score of the weight-free
    cut detector's cuts against the story's shot boundaries (`eval.cuts`).
  * `intra_shot_consistency`: mean Pearson correlation of consecutive frames
    inside each shot (1 = static, 0 = unrelated frames).
  * `inter_shot_consistency`: mean Pearson correlation between the temporal
    mean frames of consecutive shots.
"""
from __future__ import annotations

import csv
import json
import os

import numpy as np

from shotstream_jax.eval import cuts
from shotstream_jax.eval.cuts import small_frames


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 1.0


def intra_shot_consistency(frames: np.ndarray, shot_lengths: list[int]) -> float:
    x, start, scores = small_frames(frames), 0, []
    for n in shot_lengths:
        scores += [_corr(x[i], x[i + 1]) for i in range(start, start + n - 1)]
        start += n
    return float(np.mean(scores)) if scores else 1.0


def inter_shot_consistency(frames: np.ndarray, shot_lengths: list[int]) -> float:
    x = small_frames(frames)
    bounds = np.cumsum([0, *shot_lengths])
    means = [x[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])]
    scores = [_corr(a, b) for a, b in zip(means[:-1], means[1:])]
    return float(np.mean(scores)) if scores else 1.0


def video_metrics(frames: np.ndarray, shot_lengths: list[int]) -> dict:
    if sum(shot_lengths) != len(frames):
        raise ValueError(f"shot lengths {shot_lengths} do not add up to the video's {len(frames)} frames")
    return {
        "transition_control": cuts.transition_control(frames, shot_lengths),
        "intra_shot_consistency": intra_shot_consistency(frames, shot_lengths),
        "inter_shot_consistency": inter_shot_consistency(frames, shot_lengths),
    }


def read_testset(path: str) -> list[str]:
    """Caption-JSON paths of a reference test-set CSV (column `json_path`, relative to the CSV's
    folder or the working directory), or every *.json in a folder."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.endswith(".json"))
        if not names:
            raise ValueError(f"{path}: no *.json story files in this folder")
        return [os.path.join(path, n) for n in names]
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ValueError(f"{path}: cannot read test set ({e.strerror})") from None
    if not rows or "json_path" not in rows[0]:
        raise ValueError(f"{path}: expected a CSV with a 'json_path' column (the reference testset.csv)")
    out = []
    for r in rows:
        p = r["json_path"]
        cand = [p, os.path.join(os.path.dirname(path), p)]
        out.append(next((c for c in cand if os.path.exists(c)), p))
    return out


def summarize(per_story: list[dict]) -> dict:
    keys = [k for k in per_story[0] if isinstance(per_story[0][k], (int, float))]
    return {k: float(np.mean([s[k] for s in per_story])) for k in keys}


def write_json_atomic(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)
