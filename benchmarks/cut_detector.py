"""Precision and recall of the weight-free shot-cut detector (`shotstream_jax.eval.cuts`).

Sets of stories, each with known boundaries:
  * shapes:          Shapes-world stories (data/shapes.py, seed 0, stories 0..N-1),
                     hard cuts, as rendered;
  * shapes_h264:     the same through an H.264 mp4 (yuv420p) and back;
  * shapes_fade:     the same shots joined by linear cross-fades of 4, 8 and 12 frames
                     (cycled over stories; `cuts.cross_fade`);
  * texture / texture_fade: 2-5 shots of smooth random colour textures panning at
                     0-3 px per frame with sensor noise (made here), hard cuts / the
                     same cross-fades: in-shot motion that the detector must not take for cuts.
A detection matches a boundary within 2 frames (hard cuts) or half the fade
length + 2 frames (cross-fades), one to one.

  python -m benchmarks.cut_detector [--stories 100]

Prints one line per set: stories, boundaries, precision, recall, F1, and the
detector's frames per second.
"""
import argparse
import os
import tempfile
import time

import numpy as np

from shotstream_jax.data import shapes
from shotstream_jax.eval import cuts

FADES = (4, 8, 12)


def texture_shot(rng, n=33, size=64):
    speed = rng.uniform(0, 3)
    big = rng.random((size * 5, size * 5, 3))
    k = np.ones(9) / 9
    for axis in (0, 1):
        big = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), axis, big)
    big = 0.5 * (big - big.min()) / (big.max() - big.min()) + 0.5 * rng.random(3)
    angle = rng.uniform(0, 2 * np.pi)
    v = speed * np.array([np.cos(angle), np.sin(angle)])
    out = []
    for i in range(n):
        y, x = (2 * size + v * i).astype(int)
        out.append(np.clip(big[y:y + size, x:x + size] * 255 + rng.normal(0, 3, (size, size, 3)), 0, 255))
    return np.stack(out).astype(np.uint8)


def h264(frames):
    from shotstream_jax.video_io import VideoWriter, read_video
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "v.mp4")
        with VideoWriter(path, fps=shapes.FPS) as w:
            w.write(frames)
        return read_video(path)[0]


def stories(name, n):
    """(frames, boundaries, tolerance) of each story of a set."""
    for i in range(n):
        if name.startswith("shapes"):
            shots = [shapes.render_shot(s) for s in shapes.make_story(0, i).shots]
        else:
            rng = np.random.default_rng(i)
            shots = [texture_shot(rng) for _ in range(rng.integers(2, 6))]
        if name.endswith("fade"):
            length = FADES[i % len(FADES)]
            frames, truth = cuts.cross_fade(shots, length)
            yield frames, truth, length // 2 + 2
            continue
        frames = np.concatenate(shots)
        yield (h264(frames) if name.endswith("h264") else frames), cuts.boundaries([len(s) for s in shots]), 2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stories", type=int, default=100)
    ap.add_argument("--sets", default="shapes,shapes_h264,shapes_fade,texture,texture_fade")
    args = ap.parse_args()
    for name in args.sets.split(","):
        hits = false = missed = frames_seen = 0
        seconds = 0.0
        for frames, truth, tol in stories(name, args.stories):
            t0 = time.perf_counter()
            found = cuts.detect_cuts(frames)
            seconds += time.perf_counter() - t0
            h, f, m = cuts.match(found, truth, tol)
            hits, false, missed, frames_seen = hits + h, false + f, missed + m, frames_seen + len(frames)
        p = hits / max(1, hits + false)
        r = hits / max(1, hits + missed)
        print(f"{name}: {args.stories} stories, {hits + missed} boundaries: precision {p:.3f} recall {r:.3f} "
              f"F1 {cuts.f1(hits, false, missed):.3f} ({false} false, {missed} missed; "
              f"{frames_seen / seconds:.0f} frames/s at 64x64)", flush=True)


if __name__ == "__main__":
    main()
