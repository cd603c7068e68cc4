"""Feature extractors for the Table 1 metrics: jitted, batched, L2-normalised embeddings of frames.

  clip = CLIPFeatures.load(dir)        # transformers CLIPModel dir with tokenizer.json
  clip.images(frames)  -> f32[T, D]    # uint8 frames [T, H, W, 3]
  clip.texts(captions) -> f32[N, D]
  dino = DINOFeatures.load(dir)        # transformers Dinov2Model dir
  dino.images(frames)  -> f32[T, D']
  aes = AestheticHead.load(file)       # LAION aesthetic predictor (convert.aesthetic)
  aes(clip.images(frames)) -> f32[T]   # the predictor's score / 10, as VBench reports it

Preprocessing follows the processors the models were trained with: CLIP resizes
the short side to image_size (bicubic, antialiased) and centre-crops a square;
DINO resizes the short side to 224 and centre-crops each side to a multiple of
the patch size (position embeddings are resampled to that grid). Frames go
through in fixed-size batches (the last one padded) so each video shape compiles once.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shotstream_jax.convert.io import CheckpointError
from shotstream_jax.models import clip as clip_model
from shotstream_jax.models import dinov2 as dinov2_model

BATCH = 16
DINO_SHORT_SIDE = 224


def _normalise(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def resize_crop(frames: jax.Array, short: int, crop: tuple[int, int] | None, mean, std) -> jax.Array:
    """uint8 [B, H, W, 3] -> f32 [B, h, w, 3]: short side to `short` (bicubic, antialiased),
    centre crop to `crop` (default: square), normalised by the channel mean and std."""
    b, h, w, _ = frames.shape
    s = short / min(h, w)
    nh, nw = max(short, round(h * s)), max(short, round(w * s))
    x = jax.image.resize(frames.astype(jnp.float32) / 255.0, (b, nh, nw, 3), "cubic", antialias=True)
    ch, cw = crop or (short, short)
    top, left = (nh - ch) // 2, (nw - cw) // 2
    x = x[:, top:top + ch, left:left + cw]
    return (x - jnp.asarray(mean)) / jnp.asarray(std)


def _batched(fn, frames: np.ndarray) -> np.ndarray:
    """fn over fixed-size batches of frames, the last padded by repeating its final frame."""
    out = []
    for a in range(0, len(frames), BATCH):
        chunk = frames[a:a + BATCH]
        pad = BATCH - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        out.append(np.asarray(fn(jnp.asarray(chunk)))[:BATCH - pad])
    return np.concatenate(out)


class CLIPFeatures:
    def __init__(self, model: clip_model.CLIP, tokenizer=None):
        self.model, self.tokenizer = model, tokenizer
        size = model.cfg.image_size
        self._image = nnx.jit(lambda m, x: _normalise(m.encode_image(
            resize_crop(x, size, None, clip_model.IMAGE_MEAN, clip_model.IMAGE_STD))))
        self._text = nnx.jit(lambda m, ids: _normalise(m.encode_text(ids)))

    @classmethod
    def load(cls, path: str) -> "CLIPFeatures":
        from tokenizers import Tokenizer

        from shotstream_jax.convert.clip import load_clip
        tok_file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else None
        if tok_file is None or not os.path.exists(tok_file):
            raise CheckpointError(path, "no tokenizer.json in the CLIP directory (save it with "
                                        "CLIPTokenizerFast.save_pretrained)")
        try:
            tokenizer = Tokenizer.from_file(tok_file)
        except Exception as e:  # the tokenizers library raises its own exception type
            raise CheckpointError(tok_file, f"not a readable tokenizer file ({e})") from None
        return cls(load_clip(path), tokenizer)

    def images(self, frames: np.ndarray) -> np.ndarray:
        return _batched(lambda x: self._image(self.model, x), frames)

    def tokenize(self, texts) -> np.ndarray:
        """int32 [N, max_positions]: the tokenizer's ids (with its start/end tokens), cut to fit
        with the end-of-text token kept last, padded with 0 after it."""
        cfg = self.model.cfg
        out = np.zeros((len(texts), cfg.max_positions), np.int32)
        for i, t in enumerate(texts):
            ids = self.tokenizer.encode(t).ids
            if len(ids) > cfg.max_positions:
                ids = ids[:cfg.max_positions - 1] + ids[-1:]
            out[i, :len(ids)] = ids
        return out

    def texts(self, texts) -> np.ndarray:
        return np.asarray(self._text(self.model, jnp.asarray(self.tokenize(list(texts)))))


class DINOFeatures:
    def __init__(self, model: dinov2_model.DINOv2, short_side: int = DINO_SHORT_SIDE):
        self.model = model
        self.short_side = short_side
        self._fns = {}

    @classmethod
    def load(cls, path: str) -> "DINOFeatures":
        from shotstream_jax.convert.dinov2 import load_dinov2
        return cls(load_dinov2(path))

    def images(self, frames: np.ndarray) -> np.ndarray:
        h, w = frames.shape[1:3]
        key = (h, w)
        if key not in self._fns:
            p, s = self.model.cfg.patch_size, self.short_side
            crop = tuple(max(p, round(n * s / min(h, w)) // p * p) for n in (h, w))
            self._fns[key] = nnx.jit(lambda m, x: _normalise(m.embed(resize_crop(
                x, s, crop, dinov2_model.IMAGE_MEAN, dinov2_model.IMAGE_STD))))
        fn = self._fns[key]
        return _batched(lambda x: fn(self.model, x), frames)


class AestheticHead:
    """The LAION aesthetic predictor on normalised CLIP image embeddings, divided by 10 (VBench)."""

    def __init__(self, w: np.ndarray, b: float):
        self.w, self.b = np.asarray(w, np.float32), float(b)

    @classmethod
    def load(cls, path: str) -> "AestheticHead":
        from shotstream_jax.convert.aesthetic import load_aesthetic_head
        return cls(*load_aesthetic_head(path))

    def check(self, clip: CLIPFeatures, src: str) -> None:
        if self.w.shape[0] != clip.model.cfg.projection_dim:
            raise CheckpointError(src, f"the aesthetic head takes {self.w.shape[0]}-d embeddings; the CLIP "
                                       f"model gives {clip.model.cfg.projection_dim}-d (use CLIP ViT-L/14)")

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        return (np.asarray(embeddings, np.float32) @ self.w + self.b) / 10.0

