"""A shot-cut detector that needs no weights, and the transition-control score built on it.

A boundary `b` is the index of the first frame of a new shot (a story with shot
lengths n1, n2, ... has boundaries n1, n1 + n2, ...). A cross-fade's boundary
is its middle frame.

Detection, on frames uint8 [T, H, W, 3]:
  1. Each frame is described by a joint RGB histogram (4 soft bins per
     channel, block-averaged to about 64 px first) and a 16 x 16 thumbnail; given
     per-frame feature vectors (e.g. CLIP or DINO embeddings) those count too.
  2. The distance of two frames is the mean of: the histograms' total-variation
     distance, the thumbnails' mean absolute difference, and (with features)
     half the cosine distance. Each lies in [0, 1].
  3. Hard cuts: d[t] = dist(t-1, t). A cut at t when d[t] is at least `ratio`
     times the mean of d over the `window` steps on either side (t excluded)
     plus `floor`, and at least `min_distance` (PySceneDetect's adaptive rule).
  4. Gradual transitions, by twin comparison (Zhang, Kankanhalli & Smoliar
     1993): a run of steps t..e each above a lower threshold (`gradual_ratio`
     times the lower quartile of d over `gradual_window` steps on either side, plus
     `floor`) is a transition at its middle (t + e) // 2 when the frames before
     and after it, t-1 and e, are at least `min_distance` apart and the middle
     frame is close to their average, as in a cross-fade (thumbnail residual at
     most `blend_residual` of their difference; steady motion, which also gives
     long runs of raised steps, leaves a residual of about half or more).
  5. Candidates from 3 and 4 are merged strongest first (strength: d[t], or the
     run's end-to-end distance); one within `merge` frames of a stronger one is
     the same transition. Where a hard-cut candidate carries at least half the
     change of a gradual one, the transition is a hard cut, at its frame.

Scoring (`match`): a detection within `tol` frames of a true boundary is a hit,
one-to-one (closest first). Transition control is the F1 score of the hits,
2PR / (P + R): 1 when the detected cuts are exactly the story's, lower for
every missed or extra cut; a one-shot story with no detection scores 1.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

HIST_BINS = 4


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    ratio: float = 3.0          # how far above its neighbourhood a distance must stand
    floor: float = 0.01         # added to the neighbourhood level: static shots have none
    min_distance: float = 0.08  # absolute minimum distance of a cut
    window: int = 8             # hard cuts: steps on either side for the neighbourhood mean
    gradual_ratio: float = 2.0  # gradual: the lower threshold, relative to the neighbourhood's lower quartile
    gradual_window: int = 32    # gradual: steps on either side for that quartile
    blend_residual: float = 0.3  # gradual: the largest middle-frame residual of a cross-fade
    merge: int = 8              # candidates this close (frames) are one transition


def small_frames(frames: np.ndarray, size: int = 32) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float [T, size', size', 3] by block averaging (no resampling library)."""
    t, h, w, c = frames.shape
    fy, fx = max(1, h // size), max(1, w // size)
    x = frames[:, :h // fy * fy, :w // fx * fx].astype(np.float32) / 255.0
    return x.reshape(t, h // fy, fy, w // fx, fx, c).mean(axis=(2, 4))


def _histograms(frames: np.ndarray) -> np.ndarray:
    """[T, HIST_BINS**3] joint RGB histograms, each summing to 1, with trilinear soft
    binning: a colour that changes gradually moves its weight gradually between bins
    (hard binning would turn a cross-fade into a jump whenever a colour crosses a bin edge)."""
    x = small_frames(frames, 64).reshape(len(frames), -1, 3) * HIST_BINS - 0.5
    lo = np.floor(x)
    frac = x - lo
    lo = lo.astype(np.int64)
    t, n = x.shape[:2]
    ends = [(np.clip(lo[..., c], 0, HIST_BINS - 1), np.clip(lo[..., c] + 1, 0, HIST_BINS - 1)) for c in range(3)]
    weights = [(1 - frac[..., c], frac[..., c]) for c in range(3)]
    rows = np.arange(t)[:, None] * HIST_BINS ** 3
    counts = np.zeros(t * HIST_BINS ** 3)
    for r, g, b in np.ndindex(2, 2, 2):
        idx = rows + (ends[0][r] * HIST_BINS + ends[1][g]) * HIST_BINS + ends[2][b]
        w = weights[0][r] * weights[1][g] * weights[2][b]
        counts += np.bincount(idx.reshape(-1), w.reshape(-1), minlength=counts.size)
    return counts.reshape(t, -1) / n


class FrameDistance:
    """dist(i, j) for frame indices (arrays broadcast), see the module docstring."""

    def __init__(self, frames: np.ndarray, features: np.ndarray | None = None):
        self.hist = _histograms(frames)
        self.thumb = small_frames(frames, 16).reshape(len(frames), -1)
        self.feat = None
        if features is not None:
            f = np.asarray(features, np.float64)
            self.feat = f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)

    def blend_residual(self, a: int, b: int) -> float:
        """How far the middle frame between a and b is from their average, relative to how
        far a and b are apart (thumbnails): about 0 inside a cross-fade, 0.5 or more for motion."""
        mid = 0.5 * (self.thumb[(a + b) // 2] + self.thumb[(a + b + 1) // 2])  # one frame when a + b is even
        change = np.abs(self.thumb[b] - self.thumb[a]).mean()
        return float(np.abs(mid - 0.5 * (self.thumb[a] + self.thumb[b])).mean() / max(change, 1e-12))

    def __call__(self, i, j) -> np.ndarray:
        parts = [0.5 * np.abs(self.hist[i] - self.hist[j]).sum(-1),
                 np.abs(self.thumb[i] - self.thumb[j]).mean(-1)]
        if self.feat is not None:
            parts.append(0.5 * (1.0 - (self.feat[i] * self.feat[j]).sum(-1)))
        return np.mean(parts, axis=0)


def _local(x: np.ndarray, t: int, w: int, reduce) -> float:
    """`reduce` of x over the w values on either side of index t (t excluded)."""
    nb = np.concatenate([x[max(0, t - w):t], x[t + 1:t + 1 + w]])
    return float(reduce(nb)) if nb.size else 0.0


def detect_cuts(frames: np.ndarray, features: np.ndarray | None = None,
                cfg: DetectorConfig = DetectorConfig()) -> list[int]:
    """Sorted boundaries (first frame of each new shot) found in uint8 [T, H, W, 3] frames."""
    n = len(frames)
    if n < 2:
        return []
    dist = FrameDistance(frames, features)
    d = np.zeros(n)  # d[t] = dist(t-1, t); d[0] is no step
    d[1:] = dist(np.arange(n - 1), np.arange(1, n))
    cands = []  # (strength, boundary, hard)
    for t in range(1, n):
        if d[t] >= cfg.min_distance and d[t] >= cfg.ratio * _local(d[1:], t - 1, cfg.window, np.mean) + cfg.floor:
            cands.append((d[t], t, True))

    # Gradual (twin comparison): runs of steps above the lower threshold whose
    # end frames differ as much as across a cut.
    quiet = functools.partial(np.quantile, q=0.25)  # the steps within shots, even where fades are frequent
    low = np.array([cfg.gradual_ratio * _local(d[1:], t - 1, cfg.gradual_window, quiet) + cfg.floor
                    for t in range(1, n)])
    t = 1
    while t < n:
        if d[t] < low[t - 1]:
            t += 1
            continue
        end = t
        while end + 1 < n and d[end + 1] >= low[end]:
            end += 1
        total = float(dist(t - 1, end))
        if end > t and total >= cfg.min_distance and dist.blend_residual(t - 1, end) <= cfg.blend_residual:
            cands.append((total, (t + end) // 2, False))
        t = end + 1

    kept = []  # [boundary, strength, hard]
    for strength, t, hard in sorted(cands, key=lambda c: -c[0]):
        near = [k for k in kept if abs(k[0] - t) <= cfg.merge]
        if not near:
            kept.append([t, strength, hard])
        elif hard and not near[0][2] and strength >= 0.5 * near[0][1]:
            near[0][0], near[0][2] = t, True  # one frame step carries most of the change: a hard cut, at its frame
    return sorted(k[0] for k in kept)


def boundaries(shot_lengths) -> list[int]:
    return [int(b) for b in np.cumsum(shot_lengths)[:-1]]


def match(detected, truth, tol: int) -> tuple[int, int, int]:
    """(hits, false detections, missed boundaries); one-to-one, closest pairs first."""
    pairs = sorted((abs(d - b), i, j) for i, d in enumerate(detected) for j, b in enumerate(truth)
                   if abs(d - b) <= tol)
    used_d, used_b = set(), set()
    for _, i, j in pairs:
        if i not in used_d and j not in used_b:
            used_d.add(i)
            used_b.add(j)
    hits = len(used_d)
    return hits, len(detected) - hits, len(truth) - hits


def f1(hits: int, false: int, missed: int) -> float:
    if hits + false + missed == 0:
        return 1.0
    return 2 * hits / (2 * hits + false + missed)


def transition_control(frames: np.ndarray, shot_lengths, tol: int = 2, features=None) -> float:
    """F1 of the detected cuts against the story's shot boundaries (module docstring)."""
    return f1(*match(detect_cuts(frames, features), boundaries(shot_lengths), tol))


def cross_fade(shots, length: int) -> tuple[np.ndarray, list[int]]:
    """Join uint8 shots [n_i, H, W, 3] with `length`-frame linear cross-fades (the last
    `length` frames of one shot blended into the first of the next); also the true
    boundaries, each the middle frame of its fade."""
    out, bounds = [shots[0].astype(np.float32)], []
    for s in shots[1:]:
        s = s.astype(np.float32)
        w = ((np.arange(length) + 1) / (length + 1))[:, None, None, None]
        prev = out[-1]
        out[-1] = prev[:-length]
        bounds.append(sum(len(o) for o in out) + length // 2)
        out += [(1 - w) * prev[-length:] + w * s[:length], s[length:]]
    return np.concatenate(out).round().astype(np.uint8), bounds
