"""The one attention dispatch every model calls.

Shapes: q [B, Lq, H, D], k and v [B, Lk, H, D] -> out [B, Lq, H, D].

Masking is described, not materialised, by `MaskSpec` so that kernels can
skip whole key blocks:
  * `kv_len` int32 [B]: each example sees the keys [0, kv_len) only. This is
    the main form: the student's cache buffers are written in place so that
    the keys of a pass are always a prefix of the buffer, and every kernel
    stops at the prefix (XLA's key-blocked loop, cuDNN's sequence lengths,
    the Pallas kernel's tile count, splash's segment ids).
  * `q_chunk` int32 [Lq] / `kv_chunk` int32 [Lk]: block-causal chunk ids; a
    query sees a key only when kv_chunk <= q_chunk. Only the full-sequence
    (training, reference) path uses them; kernels that need a dense mask
    build it from them.
A query must always see at least one key.

Implementations: `_xla` (reference einsums, and a key-blocked online softmax
bounded by kv_len) and `_cudnn` here, our Pallas GPU kernel in `flash_gpu.py`,
JAX's TPU splash kernel wrapped in `splash_tpu.py`.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, Optional

import jax
import jax.numpy as jnp

from shotstream_jax.kernels import flash_gpu, sharded, splash_tpu

IMPLS = ("auto", "xla", "cudnn", "pallas", "pallas_interpret", "tpu_splash")
PALLAS_MAX_HEAD_DIM = 256


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MaskSpec:
    kv_len: Optional[jax.Array] = None  # int32 [B]: keys [0, kv_len) are visible
    q_chunk: Optional[jax.Array] = None  # int32 [Lq]
    kv_chunk: Optional[jax.Array] = None  # int32 [Lk]

    def key_valid(self, batch: int, lk: int) -> Optional[jax.Array]:
        """bool [B, Lk] from kv_len, or None."""
        if self.kv_len is None:
            return None
        return jnp.arange(lk)[None, :] < jnp.broadcast_to(self.kv_len, (batch,))[:, None]

    def dense(self, batch: int, lq: int, lk: int) -> Optional[jax.Array]:
        """bool [B, 1, Lq, Lk] (True = attend), or None when nothing is masked."""
        m = None
        valid = self.key_valid(batch, lk)
        if valid is not None:
            m = jnp.broadcast_to(valid[:, None, None, :], (batch, 1, lq, lk))
        if self.q_chunk is not None:
            c = self.kv_chunk[None, :] <= self.q_chunk[:, None]
            c = jnp.broadcast_to(c[None, None], (batch, 1, lq, lk))
            m = c if m is None else m & c
        return m


def _xla(q, k, v, mask: Optional[MaskSpec]):
    """The reference: full einsums over a dense mask (block-causal chunks, and the backward)."""
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


KEY_BLOCK = 512  # keys per step of the blocked XLA path (fastest of 256-1024 on XLA:CPU at Lq=4680)


@contextlib.contextmanager
def single_key_block() -> Iterator[None]:
    """Functions traced inside run the XLA path in one key block: no loop, so that a static
    cost analysis (which counts a loop body once) sees every FLOP."""
    global KEY_BLOCK
    saved, KEY_BLOCK = KEY_BLOCK, 2 ** 62
    try:
        yield
    finally:
        KEY_BLOCK = saved


def _key_blocks(lk: int, kv_len: Optional[jax.Array]) -> tuple[int, jax.Array | int]:
    """(keys per block, number of blocks to visit: a traced bound when kv_len is given)."""
    bk = min(KEY_BLOCK, lk)
    if kv_len is None:
        return bk, -(-lk // bk)
    return bk, (jnp.max(kv_len) + bk - 1) // bk


@jax.custom_vjp
def _xla_blocked(q, k, v, kv_len):
    """Online softmax over key blocks, visiting only the blocks below max(kv_len).

    The [Lq, Lk] score matrix is never materialised (one [Lq, block] tile at a
    time), and a cache buffer's unwritten tail costs nothing. A block that would
    run past Lk is moved back to end at Lk, and its keys already seen are masked.
    """
    b, _, _, d = q.shape
    lk = k.shape[1]
    bk, count = _key_blocks(lk, kv_len)
    length = jnp.full((b,), lk, jnp.int32) if kv_len is None else jnp.broadcast_to(kv_len, (b,))
    qh = (q * jnp.asarray(d ** -0.5, q.dtype)).transpose(0, 2, 1, 3)

    def body(j, carry):
        acc, m, l = carry
        start = jnp.minimum(j * bk, lk - bk)
        kb, vb = (jax.lax.dynamic_slice_in_dim(x, start, bk, 1).transpose(0, 2, 1, 3) for x in (k, v))
        s = jnp.einsum("bhqd,bhkd->bhqk", qh, kb, preferred_element_type=jnp.float32)
        pos = start + jnp.arange(bk)
        seen = (pos >= j * bk)[None, :] & (pos[None, :] < length[:, None])  # [B, bk]
        s = jnp.where(seen[:, None, None, :], s, -jnp.inf)
        m_new = jnp.maximum(m, s.max(-1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # a row with nothing seen yet
        alpha = jnp.exp(m - m_safe)
        p = jnp.exp(s - m_safe[..., None])
        acc = alpha[..., None] * acc + jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), vb,
                                                  preferred_element_type=jnp.float32)
        return acc, m_new, alpha * l + p.sum(-1)

    init = (jnp.zeros(qh.shape, jnp.float32), jnp.full(qh.shape[:-1], -jnp.inf, jnp.float32),
            jnp.zeros(qh.shape[:-1], jnp.float32))
    acc, _, l = jax.lax.fori_loop(0, count, body, init)
    return (acc / l[..., None]).transpose(0, 2, 1, 3).astype(q.dtype)


def _xla_blocked_fwd(q, k, v, kv_len):
    return _xla_blocked(q, k, v, kv_len), (q, k, v, kv_len)


def _xla_blocked_bwd(res, g):
    # The loop's trip count is traced, so it has no reverse-mode rule: the
    # backward differentiates the reference instead (training only; on
    # accelerators training runs the flash kernels' own backward).
    q, k, v, kv_len = res
    _, vjp = jax.vjp(lambda q, k, v: _xla(q, k, v, MaskSpec(kv_len=kv_len)), q, k, v)
    return (*vjp(g), None)


_xla_blocked.defvjp(_xla_blocked_fwd, _xla_blocked_bwd)


def _cudnn(q, k, v, mask: Optional[MaskSpec]):
    b, lq, _, _ = q.shape
    if mask is None or mask.q_chunk is None:
        # Key lengths, no bias: cuDNN skips the keys past each example's prefix.
        kv_len = None if mask is None or mask.kv_len is None else jnp.broadcast_to(mask.kv_len, (b,))
        q_len = None if kv_len is None else jnp.full((b,), lq, jnp.int32)
        return jax.nn.dot_product_attention(q, k, v, query_seq_lengths=q_len, key_value_seq_lengths=kv_len,
                                            implementation="cudnn")
    return jax.nn.dot_product_attention(q, k, v, mask=mask.dense(b, lq, k.shape[1]), implementation="cudnn")


def _cudnn_supports(q, k, mask: Optional[MaskSpec]) -> bool:
    """The conditions jax's cuDNN flash attention checks, decided before tracing."""
    d = q.shape[-1]
    if q.dtype not in (jnp.bfloat16, jnp.float16) or d > 128 or d % 8:
        return False
    # Chunk ids reach cuDNN as a dense bias, and its bias backward wants even lengths.
    dense = mask is not None and mask.q_chunk is not None
    return not dense or (q.shape[1] % 2 == 0 and k.shape[1] % 2 == 0)


def _auto_impl(q, k, mask: Optional[MaskSpec]) -> str:
    backend = jax.default_backend()
    d = q.shape[-1]
    if backend == "gpu":
        if _cudnn_supports(q, k, mask):
            return "cudnn"
        # Beyond 256 the Pallas kernel's D padding to a power of two outgrows
        # shared memory (the VAE's mid-block attention has D = 384).
        return "pallas" if d <= PALLAS_MAX_HEAD_DIM else "xla"
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
        if mask is not None and mask.q_chunk is not None:
            return _xla(q, k, v, mask)
        return _xla_blocked(q, k, v, None if mask is None else mask.kv_len)
    if impl == "cudnn":
        return _cudnn(q, k, v, mask)
    # Pallas kernels cannot be partitioned by XLA: on a mesh they run per shard.
    if impl == "tpu_splash":
        return sharded.on_mesh(splash_tpu.splash_attention, q, k, v, mask)
    return sharded.on_mesh(flash_gpu.flash_attention, q, k, v, mask, interpret=impl == "pallas_interpret")
