"""DINOv2 ViT (Oquab et al. 2023) in Flax NNX, for evaluation features.

  images f32[B, H, W, 3], ImageNet-normalised, H and W multiples of patch_size
  -> final-norm tokens f32[B, 1 + (H/p)(W/p), width]; `embed` gives the class token.

The same pre-norm encoder as CLIP's towers (`models.clip.Encoder`) with
LayerScale on both residual branches and exact GELU. Position embeddings are
learned for `image_size`; other sizes resample the patch grid bicubically
exactly as the reference does (PyTorch bicubic, a = -0.75, align_corners=False),
so features at 224 px from a 518 px checkpoint match the reference.

Nothing here knows about PyTorch key names; `shotstream_jax.convert.dinov2` does.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shotstream_jax.models.clip import Encoder, TowerConfig, patchify

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class DINOv2Config:
    tower: TowerConfig = TowerConfig(768, 12, 12, 3072, "gelu", 1e-6)  # dinov2-base
    image_size: int = 518
    patch_size: int = 14


def cubic_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of PyTorch's 1-D bicubic interpolation (a = -0.75, half-pixel
    centres, border samples repeated), so that resize(x) = M @ x along one axis."""
    a = -0.75
    scale = n_in / n_out
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        base = int(np.floor(src))
        t = src - base
        for k, dist in zip(range(-1, 3), (1 + t, t, 1 - t, 2 - t)):
            w = (((a * dist - 5 * a) * dist + 8 * a) * dist - 4 * a if dist > 1
                 else ((a + 2) * dist - (a + 3)) * dist * dist + 1)
            m[i, min(max(base + k, 0), n_in - 1)] += w
    return m.astype(np.float32)


class DINOv2(nnx.Module):
    def __init__(self, cfg: DINOv2Config = DINOv2Config(), *, rngs: nnx.Rngs):
        d, p = cfg.tower.hidden_size, cfg.patch_size
        n = (cfg.image_size // p) ** 2
        self.cfg = cfg
        self.patch_embed = nnx.Linear(p * p * 3, d, rngs=rngs)  # [kh, kw, cin] -> d
        self.cls_token = nnx.Param(jnp.zeros((d,), jnp.float32))
        self.pos_embed = nnx.Param(jnp.zeros((n + 1, d), jnp.float32))
        self.encoder = Encoder(cfg.tower, layer_scale=True, rngs=rngs)
        self.norm = nnx.LayerNorm(d, epsilon=cfg.tower.eps, rngs=rngs)

    def position_embeddings(self, gh: int, gw: int) -> jax.Array:
        """[1 + gh*gw, width] for a gh x gw patch grid."""
        pos = self.pos_embed[...]
        g = self.cfg.image_size // self.cfg.patch_size
        if (gh, gw) == (g, g):
            return pos
        grid = pos[1:].reshape(g, g, -1)
        grid = jnp.einsum("yi,ijd,xj->yxd", cubic_resize_matrix(g, gh), grid, cubic_resize_matrix(g, gw))
        return jnp.concatenate([pos[:1], grid.reshape(gh * gw, -1)])

    def __call__(self, images: jax.Array) -> jax.Array:
        p = self.cfg.patch_size
        x = self.patch_embed(patchify(images, p))
        cls = jnp.broadcast_to(self.cls_token[...], (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.position_embeddings(images.shape[1] // p, images.shape[2] // p)
        return self.norm(self.encoder(x))

    def embed(self, images: jax.Array) -> jax.Array:
        """The class token of the final norm, f32[B, width] (transformers' pooler_output)."""
        return self(images)[:, 0]
