"""The one attention dispatch every model calls.

Shapes: q [B, Lq, H, D], k and v [B, Lk, H, D] -> out [B, Lq, H, D].

Masking is described, not materialised, by `MaskSpec` so that kernels can
skip whole key blocks:
  * `kv_valid` bool [B, Lk]: keys every query may see (fixed-size cache
    buffers that are only partly written, an empty global cache).
  * `q_chunk` int32 [Lq] / `kv_chunk` int32 [Lk]: block-causal chunk ids; a
    query sees a key only when kv_chunk <= q_chunk.
A query must always see at least one key.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "cudnn", "pallas", "pallas_interpret", "tpu_splash")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MaskSpec:
    kv_valid: Optional[jax.Array] = None  # bool [B, Lk]
    q_chunk: Optional[jax.Array] = None  # int32 [Lq]
    kv_chunk: Optional[jax.Array] = None  # int32 [Lk]

    def dense(self, batch: int, lq: int, lk: int) -> Optional[jax.Array]:
        """bool [B, 1, Lq, Lk] (True = attend), or None when nothing is masked."""
        m = None
        if self.kv_valid is not None:
            m = jnp.broadcast_to(self.kv_valid[:, None, None, :], (batch, 1, lq, lk))
        if self.q_chunk is not None:
            c = self.kv_chunk[None, :] <= self.q_chunk[:, None]
            c = jnp.broadcast_to(c[None, None], (batch, 1, lq, lk))
            m = c if m is None else m & c
        return m


def _xla(q, k, v, mask: Optional[MaskSpec]):
    b, lq, _, d = q.shape
    lk = k.shape[1]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * (d ** -0.5)
    if mask is not None:
        m = mask.dense(b, lq, lk)
        if m is not None:
            logits = jnp.where(m, logits, -jnp.inf)
    p = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
    return out.astype(q.dtype)


def _cudnn(q, k, v, mask: Optional[MaskSpec]):
    b, lq, _, _ = q.shape
    m = None if mask is None else mask.dense(b, lq, k.shape[1])
    return jax.nn.dot_product_attention(q, k, v, mask=m, implementation="cudnn")


def _auto_impl(q) -> str:
    backend = jax.default_backend()
    if backend == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return "xla"


def attention(q: jax.Array, k: jax.Array, v: jax.Array,
              mask: Optional[MaskSpec] = None, impl: str = "auto") -> jax.Array:
    """softmax(q k^T / sqrt(D)) v over heads, with an optional `MaskSpec`."""
    if impl not in IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; choose one of {IMPLS}")
    if impl == "auto":
        impl = _auto_impl(q)
    if impl == "xla":
        return _xla(q, k, v, mask)
    if impl == "cudnn":
        return _cudnn(q, k, v, mask)
    raise NotImplementedError(f"attention impl {impl!r} is not available yet")
