"""The umT5 encoder (Wan's text encoder) in Flax NNX.

input_ids int32[B, L], attention_mask [B, L] -> last hidden state f32[B, L, d_model].

umT5 differs from T5 in one place that matters here: every layer has its own
relative-position bias table (T5 shares the first layer's). Norms are RMS
norms without mean subtraction or bias; the FFN is gated GELU (tanh
approximation); attention logits are not scaled by 1/sqrt(d).

Nothing here knows about PyTorch key names; `shotstream_jax.convert.umt5` does.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

# name -> (vocab_size, d_model, d_ff, num_heads, num_layers); d_kv = d_model // num_heads.
SIZES = {
    "xxl": (256384, 4096, 10240, 64, 24),  # umt5-xxl, Wan2.1's text encoder
    "tiny": (256, 32, 64, 4, 2),
}


@dataclasses.dataclass(frozen=True)
class UMT5Config:
    vocab_size: int = 256384
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of matmuls; norms and softmax stay float32

    @classmethod
    def from_size(cls, size: str, **overrides) -> "UMT5Config":
        if size not in SIZES:
            raise ValueError(f"unknown umT5 size {size!r}; known: {sorted(SIZES)}")
        vocab, d, ff, heads, layers = SIZES[size]
        return cls(**{**dict(vocab_size=vocab, d_model=d, d_kv=d // heads, d_ff=ff, num_heads=heads,
                             num_layers=layers), **overrides})


def relative_position_bucket(rel: jax.Array, num_buckets: int, max_distance: int) -> jax.Array:
    """Bidirectional T5 buckets of key_pos - query_pos: half the buckets for
    each sign; within a half, exact buckets for |rel| < n/4, then logarithmic
    bins up to max_distance (and everything beyond in the last bin)."""
    half = num_buckets // 2
    bucket = jnp.where(rel > 0, half, 0)
    rel = jnp.abs(rel)
    max_exact = half // 2
    # rel == 0 would give log(0); those positions take the exact branch anyway.
    log_ratio = jnp.log(jnp.maximum(rel, 1).astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (half - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, half - 1)
    return bucket + jnp.where(rel < max_exact, rel, large)


class RMSNorm(nnx.Module):
    """x / sqrt(mean(x^2) + eps) * scale, in float32."""

    def __init__(self, dim: int, cfg: UMT5Config):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.dtype(cfg.param_dtype)))
        self.eps = cfg.eps

    def __call__(self, x):
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return x * self.scale[...].astype(jnp.float32)


def _linear(cin, cout, cfg, rngs):
    return nnx.Linear(cin, cout, use_bias=False, dtype=jnp.dtype(cfg.dtype),
                      param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)


class SelfAttention(nnx.Module):
    """Multi-head self-attention with this layer's relative-position bias.

    Not `kernels.attention`: the additive per-head bias [H, L, L] and the
    unscaled logits are umT5-specific, and at 512 tokens a plain einsum is cheap.
    """

    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        inner = cfg.num_heads * cfg.d_kv
        self.q = _linear(cfg.d_model, inner, cfg, rngs)
        self.k = _linear(cfg.d_model, inner, cfg, rngs)
        self.v = _linear(cfg.d_model, inner, cfg, rngs)
        self.o = _linear(inner, cfg.d_model, cfg, rngs)
        self.pos_embedding = nnx.Embed(cfg.num_buckets, cfg.num_heads, param_dtype=jnp.dtype(cfg.param_dtype),
                                       rngs=rngs)
        self.cfg = cfg

    def __call__(self, x, buckets, key_valid):
        """x [B, L, D], buckets int32[L, L], key_valid bool[B, L] -> [B, L, D]."""
        b, l, _ = x.shape
        h, d = self.cfg.num_heads, self.cfg.d_kv
        q, k, v = (f(x).reshape(b, l, h, d) for f in (self.q, self.k, self.v))
        bias = jnp.moveaxis(self.pos_embedding(buckets).astype(jnp.float32), -1, 0)  # [H, Lq, Lk]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) + bias
        logits = jnp.where(key_valid[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        p = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        return self.o(jnp.einsum("bhqk,bkhd->bqhd", p, v).reshape(b, l, h * d))


class FeedForward(nnx.Module):
    """wo(gelu_tanh(wi_0 x) * wi_1 x)."""

    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        self.wi_0 = _linear(cfg.d_model, cfg.d_ff, cfg, rngs)
        self.wi_1 = _linear(cfg.d_model, cfg.d_ff, cfg, rngs)
        self.wo = _linear(cfg.d_ff, cfg.d_model, cfg, rngs)

    def __call__(self, x):
        return self.wo(jax.nn.gelu(self.wi_0(x), approximate=True) * self.wi_1(x))


class Block(nnx.Module):
    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(cfg.d_model, cfg)
        self.attn = SelfAttention(cfg, rngs=rngs)
        self.norm2 = RMSNorm(cfg.d_model, cfg)
        self.ffn = FeedForward(cfg, rngs=rngs)

    def __call__(self, x, buckets, key_valid):
        dtype = jnp.dtype(self.attn.cfg.dtype)
        x = x + self.attn(self.norm1(x).astype(dtype), buckets, key_valid).astype(jnp.float32)
        return x + self.ffn(self.norm2(x).astype(dtype)).astype(jnp.float32)


class UMT5Encoder(nnx.Module):
    """Token embedding, `num_layers` pre-norm blocks, final RMS norm."""

    def __init__(self, cfg: UMT5Config = UMT5Config(), *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.token_embedding = nnx.Embed(cfg.vocab_size, cfg.d_model, param_dtype=jnp.dtype(cfg.param_dtype),
                                         rngs=rngs)
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.d_model, cfg)

    def __call__(self, input_ids: jax.Array, attention_mask: Optional[jax.Array] = None) -> jax.Array:
        """int32[B, L] token ids, optional [B, L] 1 = token / 0 = padding -> f32[B, L, d_model].

        Padded positions still get (meaningless) outputs, as in the references;
        callers zero them (see `shotstream_jax.text`).
        """
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be int[B, L], got shape {input_ids.shape}")
        l = input_ids.shape[1]
        key_valid = (jnp.ones(input_ids.shape, bool) if attention_mask is None
                     else jnp.asarray(attention_mask).astype(bool))
        pos = jnp.arange(l)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.cfg.num_buckets, self.cfg.max_distance)
        x = self.token_embedding(input_ids).astype(jnp.float32)
        for block in self.blocks:
            x = block(x, buckets, key_valid)
        return self.norm(x)
