"""Toy stand-ins so that training runs end to end with nothing downloaded.

* `make_toy_dataset`: a few tiny generated multi-shot videos, caption JSONs
  and a manifest in the reference CSV format.
* `ToyTextEncoder`: TOY text encoder (hashed words -> fixed random vectors,
  zeros past the prompt as umT5 does). Not umT5; used until the real encoder
  is configured.
* `toy_encode_video`: TOY latent encoder with the Wan VAE's shapes (8x
  spatial, 4x temporal with the first frame alone, 16 channels): average
  pooling and a fixed random projection. Not the Wan VAE.
"""
from __future__ import annotations

import hashlib
import json
import os

import imageio.v2 as imageio
import numpy as np

from shotstream_jax.data.manifest import write_manifest

_COLORS = np.array([[220, 60, 60], [60, 200, 90], [70, 90, 230], [230, 200, 50], [180, 70, 200]], np.uint8)
_WORDS = ["red", "green", "blue", "yellow", "purple"]


def make_toy_dataset(out_dir: str, num_videos: int = 4, height: int = 40, width: int = 48,
                     shot_frames: tuple[int, ...] = (40, 85, 60), fps: int = 16, seed: int = 0) -> str:
    """Write `num_videos` mp4s (one coloured square per shot on its own background) and a manifest.

    Returns the manifest path. Frame sizes differ from the training resolution
    on purpose so that the resize/crop path is exercised.
    """
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for v in range(num_videos):
        frames, ranges, captions = [], [], {}
        for s, n in enumerate(shot_frames):
            bg, fg = rng.choice(len(_COLORS), 2, replace=False)
            x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
            dx, dy = rng.choice([-1, 1], 2)
            start = len(frames)
            for i in range(n):
                img = np.empty((height, width, 3), np.uint8)
                img[:] = _COLORS[bg] // 2
                x, y = (x0 + dx * i // 4) % (width - 12), (y0 + dy * i // 4) % (height - 12)
                img[y:y + 12, x:x + 12] = _COLORS[fg]
                frames.append(img)
            ranges.append([start, len(frames)])
            captions[f"shot{s + 1}"] = f"a {_WORDS[fg]} square moves on a dark {_WORDS[bg]} background"
        captions["global_caption"] = f"toy video {v} of coloured squares"
        video = os.path.join(out_dir, f"{v:04d}.mp4")
        imageio.mimwrite(video, frames, fps=fps, codec="libx264", quality=9, macro_block_size=8)
        with open(os.path.join(out_dir, f"{v:04d}.json"), "w") as f:
            json.dump(captions, f)
        rows.append([len(shot_frames), f"{v:04d}.json", f"{v:04d}.mp4", ranges])
    return write_manifest(os.path.join(out_dir, "manifest.csv"), rows)


class ToyTextEncoder:
    """TOY text encoder: word i of the prompt -> a fixed random vector (seeded by the word's hash)."""

    def __init__(self, text_dim: int, text_len: int):
        self.text_dim, self.text_len = text_dim, text_len

    def _word(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.text_dim).astype(np.float32)

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """prompts -> f32[len(prompts), text_len, text_dim], zero past each prompt's words."""
        out = np.zeros((len(prompts), self.text_len, self.text_dim), np.float32)
        for p, prompt in enumerate(prompts):
            for i, w in enumerate(prompt.lower().split()[:self.text_len]):
                out[p, i] = self._word(w)
        return out


_PROJ = np.random.default_rng(1234).standard_normal((3, 16)).astype(np.float32)


def toy_encode_video(video: np.ndarray) -> np.ndarray:
    """TOY VAE: f32[T, H, W, 3] in [-1, 1] -> f32[1 + (T-1)//4, H/8, W/8, 16]; a batch [B, T, H, W, 3] -> [B, ...]."""
    if video.ndim == 5:
        return np.stack([toy_encode_video(v) for v in video])
    t, h, w, _ = video.shape
    groups = [video[:1]] + [video[1 + 4 * i:5 + 4 * i] for i in range((t - 1) // 4)]
    frames = np.stack([g.mean(0) for g in groups])
    pooled = frames.reshape(len(groups), h // 8, 8, w // 8, 8, 3).mean((2, 4))
    return pooled @ _PROJ
