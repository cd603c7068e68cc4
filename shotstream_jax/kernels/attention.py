"""The one attention dispatch every model calls.

Shapes: q [B, Lq, H, D], k and v [B, Lk, H, D] -> out [B, Lq, H, D].

Masking is described, not materialised, by `MaskSpec` so that kernels can
skip whole key blocks:
  * `kv_valid` bool [B, Lk]: keys every query may see (fixed-size cache
    buffers that are only partly written, an empty global cache).
  * `q_chunk` int32 [Lq] / `kv_chunk` int32 [Lk]: block-causal chunk ids; a
    query sees a key only when kv_chunk <= q_chunk.
A query must always see at least one key.

Implementations: `_xla` (reference) and `_cudnn` here, our Pallas GPU kernel in
`flash_gpu.py`, JAX's TPU splash kernel wrapped in `splash_tpu.py`.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from shotstream_jax.kernels import flash_gpu, sharded, splash_tpu

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
    # Heads-major operands make both dots plain batched matmuls; with heads in the
    # middle XLA:CPU runs the score dot about 1.4x slower (benchmarks/RESULTS.md).
    # The scale goes on q (Lq*D multiplies, not Lq*Lk).
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q * jnp.asarray(d ** -0.5, q.dtype), k, v))
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    if mask is not None:
        m = mask.dense(b, lq, lk)
        if m is not None:
            logits = jnp.where(m, logits, -jnp.inf)
    p = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
    return out.transpose(0, 2, 1, 3).astype(q.dtype)


def _cudnn(q, k, v, mask: Optional[MaskSpec]):
    b, lq, _, _ = q.shape
    m = None if mask is None else mask.dense(b, lq, k.shape[1])
    return jax.nn.dot_product_attention(q, k, v, mask=m, implementation="cudnn")


def _cudnn_supports(q, k, mask: Optional[MaskSpec]) -> bool:
    """The conditions jax's cuDNN flash attention checks, decided before tracing."""
    d = q.shape[-1]
    if q.dtype not in (jnp.bfloat16, jnp.float16) or d > 128 or d % 8:
        return False
    # A mask reaches cuDNN as a dense bias, and its bias backward wants even lengths.
    has_mask = mask is not None and (mask.kv_valid is not None or mask.q_chunk is not None)
    return not has_mask or (q.shape[1] % 2 == 0 and k.shape[1] % 2 == 0)


def _auto_impl(q, k, mask: Optional[MaskSpec]) -> str:
    backend = jax.default_backend()
    if backend == "gpu":
        return "cudnn" if _cudnn_supports(q, k, mask) else "pallas"
    if backend == "tpu":
        return "tpu_splash"
    return "xla"


# impl -> (backend it needs, what to use elsewhere)
_NEEDS_BACKEND = {
    "cudnn": ("gpu", "impl='xla', or 'auto'"),
    "pallas": ("gpu", "impl='pallas_interpret' to run the same kernel in the "
                      "Pallas interpreter (slow, for tests), or 'auto'"),
    "tpu_splash": ("tpu", "impl='xla', or 'auto'"),
}


def attention(q: jax.Array, k: jax.Array, v: jax.Array,
              mask: Optional[MaskSpec] = None, impl: str = "auto") -> jax.Array:
    """softmax(q k^T / sqrt(D)) v over heads, with an optional `MaskSpec`.

    impl: "xla" (einsum reference), "cudnn" (GPU, bf16/f16), "pallas" (our
    GPU flash kernel), "pallas_interpret" (the same kernel interpreted, any
    backend), "tpu_splash" (JAX's splash kernel on TPU) or "auto" (the
    fastest available on the default backend).
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; choose one of {IMPLS}")
    if impl == "auto":
        impl = _auto_impl(q, k, mask)
    if impl in _NEEDS_BACKEND:
        needed, instead = _NEEDS_BACKEND[impl]
        backend = jax.default_backend()
        if backend != needed:
            raise ValueError(f"attention impl {impl!r} needs a {needed.upper()} backend "
                             f"but JAX's default backend is {backend!r}; use {instead} "
                             "(shotstream_jax/kernels/attention.py)")
    if impl == "xla":
        return _xla(q, k, v, mask)
    if impl == "cudnn":
        return _cudnn(q, k, v, mask)
    # Pallas kernels cannot be partitioned by XLA: on a mesh they run per shard.
    if impl == "tpu_splash":
        return sharded.on_mesh(splash_tpu.splash_attention, q, k, v, mask)
    return sharded.on_mesh(flash_gpu.flash_attention, q, k, v, mask, interpret=impl == "pallas_interpret")
