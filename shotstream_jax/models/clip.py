"""CLIP (Radford et al. 2021) image and text towers in Flax NNX, for evaluation.

  image: f32[B, H, W, 3], CLIP-normalised, H = W = image_size -> embedding f32[B, projection_dim]
  text:  int32[B, L] token ids, each row holding an end-of-text token -> embedding f32[B, projection_dim]

The towers are pre-norm transformer encoders (`Encoder`, also used by
DINOv2): the image tower embeds 'patch_size' patches plus a class token and
pools the class token; the text tower is causal and pools the end-of-text
token. Embeddings are not L2-normalised here; the metrics normalise.

Nothing here knows about PyTorch key names; `shotstream_jax.convert.clip` does.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}

# CLIP's pixel statistics (the processor's image_mean / image_std).
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class TowerConfig:
    """One transformer tower: width, depth, heads, MLP size, activation, norm epsilon."""
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "quick_gelu"
    eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    vision: TowerConfig = TowerConfig(1024, 24, 16, 4096)  # ViT-L/14
    text: TowerConfig = TowerConfig(768, 12, 12, 3072)
    image_size: int = 224
    patch_size: int = 14
    vocab_size: int = 49408
    max_positions: int = 77
    projection_dim: int = 768
    eos_token_id: int = 49407  # 2 in configs older than transformers PR 24773: pool at the largest id


class Attention(nnx.Module):
    """Multi-head self-attention with biased q/k/v/out projections, logits scaled by 1/sqrt(d).

    A plain einsum rather than `kernels.attention`: sequences are short (77
    text tokens, at most a few hundred patches) and the text tower needs a causal mask.
    """

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.q, self.k, self.v, self.out = (nnx.Linear(dim, dim, rngs=rngs) for _ in range(4))
        self.heads = heads

    def __call__(self, x, causal: bool = False):
        b, l, d = x.shape
        h = self.heads
        q, k, v = (f(x).reshape(b, l, h, d // h) for f in (self.q, self.k, self.v))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d / h).astype(x.dtype)
        if causal:
            logits = jnp.where(jnp.tril(jnp.ones((l, l), bool)), logits, jnp.finfo(logits.dtype).min)
        p = jax.nn.softmax(logits, axis=-1)
        return self.out(jnp.einsum("bhqk,bkhd->bqhd", p, v).reshape(b, l, d))


class MLP(nnx.Module):
    def __init__(self, dim: int, hidden: int, act: str, *, rngs: nnx.Rngs):
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; known: {sorted(ACTIVATIONS)}")
        self.fc1 = nnx.Linear(dim, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, dim, rngs=rngs)
        self.act = act

    def __call__(self, x):
        return self.fc2(ACTIVATIONS[self.act](self.fc1(x)))


class LayerScale(nnx.Module):
    """Per-channel residual-branch gain (DINOv2); CLIP has none."""

    def __init__(self, dim: int, init: float = 1.0):
        self.scale = nnx.Param(jnp.full((dim,), init, jnp.float32))

    def __call__(self, x):
        return x * self.scale[...]


class Layer(nnx.Module):
    """x + ls1(attn(norm1 x)); x + ls2(mlp(norm2 x))."""

    def __init__(self, cfg: TowerConfig, layer_scale: bool, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.norm1 = nnx.LayerNorm(d, epsilon=cfg.eps, rngs=rngs)
        self.attn = Attention(d, cfg.num_heads, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d, epsilon=cfg.eps, rngs=rngs)
        self.mlp = MLP(d, cfg.intermediate_size, cfg.hidden_act, rngs=rngs)
        self.ls1 = LayerScale(d) if layer_scale else None
        self.ls2 = LayerScale(d) if layer_scale else None

    def __call__(self, x, causal: bool = False):
        a = self.attn(self.norm1(x), causal)
        x = x + (self.ls1(a) if self.ls1 is not None else a)
        m = self.mlp(self.norm2(x))
        return x + (self.ls2(m) if self.ls2 is not None else m)


class Encoder(nnx.Module):
    def __init__(self, cfg: TowerConfig, layer_scale: bool = False, *, rngs: nnx.Rngs):
        self.layers = nnx.List([Layer(cfg, layer_scale, rngs=rngs) for _ in range(cfg.num_layers)])

    def __call__(self, x, causal: bool = False):
        for layer in self.layers:
            x = layer(x, causal)
        return x


def patchify(images: jax.Array, patch: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C] in row-major patch order (the conv-as-matmul form)."""
    b, h, w, c = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}")
    x = images.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


class VisionTower(nnx.Module):
    def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
        d, p = cfg.vision.hidden_size, cfg.patch_size
        n = (cfg.image_size // p) ** 2
        self.patch_embed = nnx.Linear(p * p * 3, d, use_bias=False, rngs=rngs)  # [kh, kw, cin] -> d
        self.class_embed = nnx.Param(jnp.zeros((d,), jnp.float32))
        self.pos_embed = nnx.Param(jnp.zeros((n + 1, d), jnp.float32))
        self.pre_norm = nnx.LayerNorm(d, epsilon=cfg.vision.eps, rngs=rngs)
        self.encoder = Encoder(cfg.vision, rngs=rngs)
        self.post_norm = nnx.LayerNorm(d, epsilon=cfg.vision.eps, rngs=rngs)
        self.patch_size = p

    def __call__(self, images):
        """f32[B, H, W, 3] normalised pixels -> pooled class token f32[B, width]."""
        x = self.patch_embed(patchify(images, self.patch_size))
        if x.shape[1] + 1 != self.pos_embed.shape[0]:
            raise ValueError(f"images of {images.shape[1]}x{images.shape[2]} give {x.shape[1]} patches; this "
                             f"model has {self.pos_embed.shape[0] - 1} positions (resize to its image_size)")
        cls = jnp.broadcast_to(self.class_embed[...], (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...]
        x = self.encoder(self.pre_norm(x))
        return self.post_norm(x[:, 0])


class TextTower(nnx.Module):
    def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
        d = cfg.text.hidden_size
        self.token_embed = nnx.Embed(cfg.vocab_size, d, rngs=rngs)
        self.pos_embed = nnx.Param(jnp.zeros((cfg.max_positions, d), jnp.float32))
        self.encoder = Encoder(cfg.text, rngs=rngs)
        self.final_norm = nnx.LayerNorm(d, epsilon=cfg.text.eps, rngs=rngs)
        self.eos_token_id = cfg.eos_token_id

    def __call__(self, ids):
        """int32[B, L] -> the end-of-text token's final state f32[B, width]."""
        l = ids.shape[1]
        if l > self.pos_embed.shape[0]:
            raise ValueError(f"{l} tokens; this text tower has {self.pos_embed.shape[0]} positions")
        x = self.token_embed(ids) + self.pos_embed[:l]
        x = self.final_norm(self.encoder(x, causal=True))
        eos = jnp.argmax(ids, axis=-1) if self.eos_token_id == 2 else jnp.argmax(ids == self.eos_token_id, axis=-1)
        return jnp.take_along_axis(x, eos[:, None, None], axis=1)[:, 0]


class CLIP(nnx.Module):
    """Both towers and their projections into the shared embedding space."""

    def __init__(self, cfg: CLIPConfig = CLIPConfig(), *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.vision = VisionTower(cfg, rngs=rngs)
        self.text = TextTower(cfg, rngs=rngs)
        self.visual_projection = nnx.Linear(cfg.vision.hidden_size, cfg.projection_dim, use_bias=False, rngs=rngs)
        self.text_projection = nnx.Linear(cfg.text.hidden_size, cfg.projection_dim, use_bias=False, rngs=rngs)

    def encode_image(self, images: jax.Array) -> jax.Array:
        return self.visual_projection(self.vision(images))

    def encode_text(self, ids: jax.Array) -> jax.Array:
        return self.text_projection(self.text(ids))
