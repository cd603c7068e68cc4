"""Attention on TPU through JAX's own Pallas splash attention kernel.

We do not write a TPU kernel: `jax.experimental.pallas.ops.tpu.splash_attention`
already has a block-sparse flash forward and backward. This module maps our
layout and `MaskSpec` onto it:
  * Layout: splash takes q [H, Lq, D] and k, v [H, Lk, D] per example; we
    transpose from [B, L, H, D] and vmap over the batch.
  * Scale: splash does not scale logits, so q is multiplied by 1/sqrt(D)
    (in float32, then cast back) before the call.
  * Blocking: L is padded to a multiple of 128 (the TPU lane width) and the
    tile is the largest of 512/256/128 that divides the padded length.
  * kv_len and the key padding become segment ids: every query is in
    segment 0, a valid key in segment 0, an invalid or padding key in segment
    1, so it is never seen. Padding queries see the valid keys and are
    sliced off.
  * kv_len also bounds the work: in each example's copy of the kernel's
    block masks, the key tiles from ceil(kv_len / tile) on are marked empty,
    so splash neither computes them nor (forward, dq) copies their K/V in.
    Per-example block masks make vmap run the kernel once per example.
  * Block-causal chunk ids become a dynamic splash mask [1, Lq, Lk] (one head,
    shared by all): splash still skips the fully masked tiles, but a dynamic
    mask is materialised densely (Lq * Lk bytes, about 200 MB for the
    4,680 x 42,120 cache attention). Chunk ids are traced values under jit, so
    the static (numpy) masks splash prefers are not available here.

Splash runs on TPU only; `interpret=True` runs it through the Pallas TPU
interpreter on any backend, which is what the CPU tests do.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

_LANES = 128


def _tile(length: int) -> int:
    return next(t for t in (512, 256, _LANES) if length % t == 0)


def _pad_len(x, n: int, axis: int, value=0):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, n - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)


def make_kernel(mask, lq: int, lk: int, *, interpret: bool = False):
    """Splash kernel for padded lengths `lq`, `lk` (multiples of 128).

    Returns a callable (q, k, v, segment_ids) on one example's [H, L, D].
    """
    if mask is not None and mask.q_chunk is not None:
        q_chunk = _pad_len(mask.q_chunk, lq, 0, value=jnp.iinfo(jnp.int32).max)
        kv_chunk = _pad_len(mask.kv_chunk, lk, 0)
        dense = (kv_chunk[None, :] <= q_chunk[:, None])[None]
    else:
        dense = splash.MultiHeadMask([splash.FullMask((lq, lk))])
    bq, bk = _tile(lq), _tile(lk)
    sizes = splash.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk,
                              block_q_dkv=bq, block_kv_dkv=bk, block_kv_dkv_compute=bk,
                              block_q_dq=bq, block_kv_dq=bk)
    kernel = splash.make_splash_mha_single_device(dense, block_sizes=sizes,
                                                  interpret=interpret)
    if isinstance(dense, jax.Array):
        # make_splash_mha maps jnp.array over the MaskInfo, which under jit
        # turns its static is_dynamic_mask flag into a tracer that __call__
        # then branches on in Python; put the plain bool back.
        kernel.fwd_mask_info = kernel.fwd_mask_info._replace(is_dynamic_mask=True)
    return kernel


def bounded(kernel, kv_len):
    """`kernel` with the key tiles at and past ceil(kv_len / tile) marked empty (kv_len: a scalar).

    A tile's block-mask entry 0 makes splash skip it; its next-block entry
    pointing at a block already fetched skips the copy too (the forward and dq
    passes: the last live key tile; the dkv pass, which walks the query tiles
    of each key tile: the last query tile).
    """
    sizes = kernel.kwargs["block_sizes"]

    def bound(info, block_kv, walks_kv):
        if info is None:
            return None
        nq, nk = info.block_mask.shape[-2:]
        n_live = jnp.maximum(-(-kv_len // block_kv), 1)
        live = jnp.arange(nk) < n_live
        fill = n_live - 1 if walks_kv else nq - 1
        return info._replace(block_mask=jnp.where(live, info.block_mask, 0).astype(info.block_mask.dtype),
                             data_next=jnp.where(live, info.data_next, fill).astype(info.data_next.dtype))

    return type(kernel)(bound(kernel.fwd_mask_info, sizes.block_kv, True),
                        bound(kernel.dq_mask_info, sizes.block_kv_dq, True),
                        bound(kernel.dkv_mask_info, sizes.block_kv_dkv, False), **kernel.kwargs)


def segment_ids(mask, batch: int, lq: int, lk_real: int, lk: int):
    """Per-example SegmentIds (leading batch axis) hiding keys past kv_len and padding keys."""
    kv = jnp.zeros((batch, lk_real), jnp.int32)
    valid = None if mask is None else mask.key_valid(batch, lk_real)
    if valid is not None:
        kv = jnp.where(valid, 0, 1).astype(jnp.int32)
    kv = _pad_len(kv, lk, 1, value=1)
    return splash.SegmentIds(q=jnp.zeros((batch, lq), jnp.int32), kv=kv)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask=None, *,
                     interpret: bool = False) -> jax.Array:
    """softmax(q k^T / sqrt(D)) v via splash; q [B,Lq,H,D], k, v [B,Lk,H,D]."""
    b, lq, _, d = q.shape
    lk = k.shape[1]
    lq_pad, lk_pad = -(-lq // _LANES) * _LANES, -(-lk // _LANES) * _LANES
    kernel = make_kernel(mask, lq_pad, lk_pad, interpret=interpret)
    seg = segment_ids(mask, b, lq_pad, lk, lk_pad)
    heads_first = lambda x, n: _pad_len(jnp.swapaxes(x, 1, 2), n, 2)
    qs = (q.astype(jnp.float32) * d ** -0.5).astype(q.dtype)
    kv_len = None if mask is None or mask.kv_len is None else jnp.broadcast_to(mask.kv_len, (b,))

    def one(q, k, v, seg, kv_len):
        return (kernel if kv_len is None else bounded(kernel, kv_len))(q, k, v, segment_ids=seg)

    o = jax.vmap(one)(heads_first(qs, lq_pad), heads_first(k, lk_pad), heads_first(v, lk_pad), seg, kv_len)
    return jnp.swapaxes(o, 1, 2)[:, :lq].astype(q.dtype)
