"""Evaluation of generated multi-shot videos: speed, and the metrics computable without
pretrained feature networks.

The paper's consistency, text-alignment and aesthetic scores need DINO / CLIP /
aesthetic-predictor weights that this package cannot download; they are not
computed here. What is computed, from pixels:
  * `transition_control`: shot-cut accuracy. A content-difference cut detector
    (mean absolute difference of consecutive downsampled frames, as
    PySceneDetect's ContentDetector) marks the S-1 largest differences as cuts;
    the score is the fraction of the story's S-1 shot boundaries found.
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


def _small(frames: np.ndarray, size: int = 32) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float [T, size', size', 3] by block averaging (no resampling library)."""
    t, h, w, c = frames.shape
    fy, fx = max(1, h // size), max(1, w // size)
    x = frames[:, :h // fy * fy, :w // fx * fx].astype(np.float32) / 255.0
    return x.reshape(t, h // fy, fy, w // fx, fx, c).mean(axis=(2, 4))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 1.0


def frame_differences(frames: np.ndarray) -> np.ndarray:
    """[T-1] mean absolute difference between consecutive downsampled frames."""
    x = _small(frames)
    return np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3))


def transition_control(frames: np.ndarray, shot_lengths: list[int]) -> float:
    """Fraction of shot boundaries at which the cut detector fires (see module docstring)."""
    if len(shot_lengths) < 2:
        return 1.0
    d = frame_differences(frames)
    boundaries = set(np.cumsum(shot_lengths)[:-1] - 1)  # diff index i is between frames i and i+1
    detected = set(np.argsort(d)[::-1][:len(boundaries)].tolist())
    return len(boundaries & detected) / len(boundaries)


def intra_shot_consistency(frames: np.ndarray, shot_lengths: list[int]) -> float:
    x, start, scores = _small(frames), 0, []
    for n in shot_lengths:
        scores += [_corr(x[i], x[i + 1]) for i in range(start, start + n - 1)]
        start += n
    return float(np.mean(scores)) if scores else 1.0


def inter_shot_consistency(frames: np.ndarray, shot_lengths: list[int]) -> float:
    x = _small(frames)
    bounds = np.cumsum([0, *shot_lengths])
    means = [x[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])]
    scores = [_corr(a, b) for a, b in zip(means[:-1], means[1:])]
    return float(np.mean(scores)) if scores else 1.0


def video_metrics(frames: np.ndarray, shot_lengths: list[int]) -> dict:
    if sum(shot_lengths) != len(frames):
        raise ValueError(f"shot lengths {shot_lengths} do not add up to the video's {len(frames)} frames")
    return {
        "transition_control": transition_control(frames, shot_lengths),
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
