"""Flash attention for GPU in Pallas (Triton lowering), forward and backward.

Layout: q [B, Lq, H, D], k and v [B, Lk, H, D], kept as they are (no
transposes): a block spec squeezes B and H, so each program sees a
[rows, D] tile with a row stride of H * D.

Blocking
  * Forward: grid (Lq / block_q, B, H). A program holds one query tile and
    walks the key tiles of its row with an online softmax in float32
    (running max `m`, denominator `l`, unnormalised accumulator), in base 2
    (exp2 of logits pre-scaled by log2(e)/sqrt(D)). It writes the output tile
    and the log-sum-exp per query, the only residual the backward needs.
  * Backward (FlashAttention-2 split, no atomics, so Lq != Lk is fine):
    a dK/dV kernel, grid (Lk / block_k_bwd, B, H), walks query tiles for one
    key tile; a dQ kernel, grid (Lq / block_q_bwd, B, H), walks key tiles for
    one query tile. delta = rowsum(dO * O) is a plain XLA reduction.

Masking
  The `MaskSpec` is folded into two integer id vectors: q_id [Lq] and
  kv_id [B, Lk]; query i sees key j iff kv_id[j] <= q_id[i]. Block-causal
  chunks map to themselves; a key at or past the example's kv_len, or a padding key,
  gets _KV_OFF, above every query id; a padding query copies the id of the
  last real query, so it sees keys (no NaN) but opens no extra tiles. Lq and
  Lk are padded in the wrapper to whole tiles, D to a power of two >= 16
  (Triton's dot needs it); padding is sliced off again, and autodiff through
  pad/slice gives zero cotangents. Masked logits get a large finite negative
  value, not -inf, so a tile whose rows are all masked cannot turn the online
  softmax into NaN; a query that sees no key at all gets 0 and zero
  gradients (the XLA reference gives NaN; both are outside the MaskSpec
  contract).

Block skipping
  Before the kernels run, the wrapper reduces the ids per tile (max q_id of a
  query tile, min kv_id of a key tile) to a table of live tile pairs; each
  program reads the list of its live partners and a count, so fully masked
  tiles (an empty cache, future chunks) cost neither loads nor matmuls. The
  test is conservative: a listed pair may still be partly masked elementwise.
  With a key length (the student's cache prefix) the live key tiles of a row
  are exactly those below ceil(kv_len / block_k): the loop never reads a
  tile of the buffer's unwritten tail.

Chunk ids must be below 2**31 - 1.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
_KV_OFF = 2 ** 31 - 1  # id of a key nobody sees
_MIN_BLOCK = 16  # smallest tile dimension Triton's dot accepts


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes (powers of two). Defaults are untuned guesses for H100."""
    block_q: int = 128
    block_k: int = 64
    block_q_bwd: int = 64
    block_k_bwd: int = 64
    num_stages: int = 2


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static per-call settings, after fitting the tiles to the shapes."""
    block_q: int
    block_k: int
    block_q_bwd: int
    block_k_bwd: int
    num_stages: int
    scale: float  # 1/sqrt(D) of the unpadded head dim
    masked: bool
    interpret: bool


def _fit(block: int, length: int) -> int:
    return min(block, max(_MIN_BLOCK, pl.next_power_of_2(length)))


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _ids(mask, batch: int, lq: int, lk: int, lq_pad: int, lk_pad: int):
    """Folds a MaskSpec and the padding into q_id [Lq_pad], kv_id [B, Lk_pad]."""
    q_id = jnp.zeros((lq,), jnp.int32)
    kv_id = jnp.zeros((batch, lk), jnp.int32)
    if mask is not None and mask.q_chunk is not None:
        q_id = mask.q_chunk.astype(jnp.int32)
        kv_id = jnp.broadcast_to(mask.kv_chunk.astype(jnp.int32)[None], (batch, lk))
    if mask is not None and mask.kv_len is not None:
        kv_id = jnp.where(mask.key_valid(batch, lk), kv_id, _KV_OFF)
    q_id = jnp.pad(q_id, (0, lq_pad - lq), mode="edge")
    kv_id = jnp.pad(kv_id, ((0, 0), (0, lk_pad - lk)), constant_values=_KV_OFF)
    return q_id, kv_id


def _live_tiles(q_id, kv_id, block_q: int, block_k: int):
    """bool [B, Lq/block_q, Lk/block_k]: tile pairs with a possibly visible key."""
    q_max = q_id.reshape(-1, block_q).max(-1)
    kv_min = kv_id.reshape(kv_id.shape[0], -1, block_k).min(-1)
    return kv_min[:, None, :] <= q_max[None, :, None]


def _tile_lists(live):
    """Per row of `live`: its live column indices first (ascending), and their count."""
    order = jnp.argsort(~live, axis=-1, stable=True).astype(jnp.int32)
    return order, live.sum(-1, dtype=jnp.int32)


def _scores(q, k, q_id, kv_id, cfg: _Config):
    """Masked logits of a tile, in base 2 (ready for exp2), float32."""
    s = plgpu.dot(q, k, trans_b=True) * (cfg.scale * math.log2(math.e))
    if cfg.masked:
        s = jnp.where(kv_id[None, :] <= q_id[:, None], s, _MASK_VALUE)
    return s


def _fwd_kernel(tiles_ref, count_ref, q_id_ref, kv_id_ref, q_ref, k_ref, v_ref,
                o_ref, lse_ref, *, cfg: _Config):
    bq, d = q_ref.shape
    bk = cfg.block_k
    q = q_ref[...]
    q_id = q_id_ref[...]

    def body(i, carry):
        acc, m, l = carry
        rows = pl.ds(pl.multiple_of(tiles_ref[i] * bk, bk), bk)
        v = v_ref[rows, :]
        s = _scores(q, k_ref[rows, :], q_id, kv_id_ref[rows], cfg)
        m_new = jnp.maximum(m, s.max(axis=-1))
        alpha = jnp.exp2(m - m_new)
        p = jnp.exp2(s - m_new[:, None])
        l = alpha * l + p.sum(axis=-1)
        acc = alpha[:, None] * acc + plgpu.dot(p.astype(v.dtype), v)
        return acc, m_new, l

    init = (jnp.zeros((bq, d), jnp.float32),
            jnp.full((bq,), -jnp.inf, jnp.float32),
            jnp.zeros((bq,), jnp.float32))
    acc, m, l = jax.lax.fori_loop(0, count_ref[pl.program_id(0)], body, init)
    # A row that saw only masked logits (m == _MASK_VALUE) or no live tile
    # (m == -inf) sees no key: output 0 and lse +inf, so the backward's
    # exp2(s - lse) is 0 for it rather than an average over masked keys.
    empty = m <= _MASK_VALUE
    l = jnp.where(empty, 1.0, l)
    o_ref[...] = jnp.where(empty[:, None], 0.0, acc / l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, jnp.inf, m + jnp.log2(l))


def _dkv_kernel(tiles_ref, count_ref, q_id_ref, kv_id_ref, q_ref, k_ref, v_ref,
                do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, cfg: _Config):
    bk, d = k_ref.shape
    bq = cfg.block_q_bwd
    k = k_ref[...]
    v = v_ref[...]
    kv_id = kv_id_ref[...]

    def body(i, carry):
        dk, dv = carry
        rows = pl.ds(pl.multiple_of(tiles_ref[i] * bq, bq), bq)
        q = q_ref[rows, :]
        do = do_ref[rows, :]
        s = _scores(q, k, q_id_ref[rows], kv_id, cfg)
        p = jnp.exp2(s - lse_ref[rows][:, None])
        dv = dv + plgpu.dot(p.astype(do.dtype), do, trans_a=True)
        dp = plgpu.dot(do, v, trans_b=True)
        ds = p * (dp - delta_ref[rows][:, None])
        dk = dk + plgpu.dot(ds.astype(q.dtype), q, trans_a=True)
        return dk, dv

    zeros = jnp.zeros((bk, d), jnp.float32)
    dk, dv = jax.lax.fori_loop(0, count_ref[pl.program_id(0)], body, (zeros, zeros))
    dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(tiles_ref, count_ref, q_id_ref, kv_id_ref, q_ref, k_ref, v_ref,
               do_ref, lse_ref, delta_ref, dq_ref, *, cfg: _Config):
    bq, d = q_ref.shape
    bk = cfg.block_k_bwd
    q = q_ref[...]
    do = do_ref[...]
    q_id = q_id_ref[...]
    lse = lse_ref[...]
    delta = delta_ref[...]

    def body(i, dq):
        rows = pl.ds(pl.multiple_of(tiles_ref[i] * bk, bk), bk)
        k = k_ref[rows, :]
        s = _scores(q, k, q_id, kv_id_ref[rows], cfg)
        p = jnp.exp2(s - lse[:, None])
        dp = plgpu.dot(do, v_ref[rows, :], trans_b=True)
        ds = p * (dp - delta[:, None])
        return dq + plgpu.dot(ds.astype(k.dtype), k)

    dq = jax.lax.fori_loop(0, count_ref[pl.program_id(0)], body,
                           jnp.zeros((bq, d), jnp.float32))
    dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


def _row_tiles(block: int, d: int):
    """BlockSpec of one [block, D] tile of a [B, L, H, D] array, grid (tile, b, h)."""
    return pl.BlockSpec((None, block, None, d), lambda t, b, h: (b, t, h, 0))


def _row_all(length: int, d: int):
    """BlockSpec of all L rows of one (b, h) of a [B, L, H, D] array."""
    return pl.BlockSpec((None, length, None, d), lambda t, b, h: (b, 0, h, 0))


def _table_specs(n_rows: int, n_cols: int):
    """BlockSpecs of the live-tile list [B, rows, cols] and counts [B, rows]."""
    return [pl.BlockSpec((None, None, n_cols), lambda t, b, h: (b, t, 0)),
            pl.BlockSpec((None, n_rows), lambda t, b, h: (b, 0))]


def _call(kernel, cfg: _Config, tile: int, grid, in_specs, out_specs, out_shape, name):
    """pallas_call of `kernel`; `tile` = rows x cols of its score tile, sizing the warps."""
    return pl.pallas_call(
        functools.partial(kernel, cfg=cfg), grid=grid, in_specs=in_specs,
        out_specs=out_specs, out_shape=out_shape, interpret=cfg.interpret,
        compiler_params=plgpu.CompilerParams(num_warps=4 if tile <= 64 * 64 else 8,
                                             num_stages=cfg.num_stages),
        name=name)


def _forward(q, k, v, q_id, kv_id, cfg: _Config):
    b, lq, h, d = q.shape
    lk = k.shape[1]
    bq, bk = cfg.block_q, cfg.block_k
    tiles, count = _tile_lists(_live_tiles(q_id, kv_id, bq, bk))
    n_q = lq // bq
    return _call(
        _fwd_kernel, cfg, bq * bk, (n_q, b, h),
        in_specs=[*_table_specs(n_q, lk // bk),
                  pl.BlockSpec((bq,), lambda t, b, h: (t,)),
                  pl.BlockSpec((None, lk), lambda t, b, h: (b, 0)),
                  _row_tiles(bq, d), _row_all(lk, d), _row_all(lk, d)],
        out_specs=[_row_tiles(bq, d),
                   pl.BlockSpec((None, None, bq), lambda t, b, h: (b, h, t))],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((b, h, lq), jnp.float32)],
        name="flash_fwd")(tiles, count, q_id, kv_id, q, k, v)


def _backward(q, k, v, q_id, kv_id, o, lse, do, cfg: _Config):
    b, lq, h, d = q.shape
    lk = k.shape[1]
    bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    n_q, n_k = lq // bq, lk // bk
    delta = jnp.einsum("bqhd,bqhd->bhq", o.astype(jnp.float32), do.astype(jnp.float32))
    live = _live_tiles(q_id, kv_id, bq, bk)
    row_stats = pl.BlockSpec((None, None, lq), lambda t, b, h: (b, h, 0))
    dk, dv = _call(
        _dkv_kernel, cfg, bq * bk, (n_k, b, h),
        in_specs=[*_table_specs(n_k, n_q),
                  pl.BlockSpec((lq,), lambda t, b, h: (0,)),
                  pl.BlockSpec((None, bk), lambda t, b, h: (b, t)),
                  _row_all(lq, d), _row_tiles(bk, d), _row_tiles(bk, d),
                  _row_all(lq, d), row_stats, row_stats],
        out_specs=[_row_tiles(bk, d), _row_tiles(bk, d)],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                   jax.ShapeDtypeStruct(v.shape, v.dtype)],
        name="flash_bwd_dkv",
    )(*_tile_lists(jnp.swapaxes(live, 1, 2)), q_id, kv_id, q, k, v, do, lse, delta)
    tile_stats = pl.BlockSpec((None, None, bq), lambda t, b, h: (b, h, t))
    dq = _call(
        _dq_kernel, cfg, bq * bk, (n_q, b, h),
        in_specs=[*_table_specs(n_q, n_k),
                  pl.BlockSpec((bq,), lambda t, b, h: (t,)),
                  pl.BlockSpec((None, lk), lambda t, b, h: (b, 0)),
                  _row_tiles(bq, d), _row_all(lk, d), _row_all(lk, d),
                  _row_tiles(bq, d), tile_stats, tile_stats],
        out_specs=_row_tiles(bq, d),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        name="flash_bwd_dq",
    )(*_tile_lists(live), q_id, kv_id, q, k, v, do, lse, delta)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, q_id, kv_id, cfg: _Config):
    return _forward(q, k, v, q_id, kv_id, cfg)[0]


def _flash_fwd(q, k, v, q_id, kv_id, cfg: _Config):
    o, lse = _forward(q, k, v, q_id, kv_id, cfg)
    return o, (q, k, v, q_id, kv_id, o, lse)


def _flash_bwd(cfg: _Config, res, do):
    q, k, v, q_id, kv_id, o, lse = res
    dq, dk, dv = _backward(q, k, v, q_id, kv_id, o, lse, do, cfg)
    return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask=None, *,
                    interpret: bool = False,
                    block_sizes: Optional[BlockSizes] = None) -> jax.Array:
    """softmax(q k^T / sqrt(D)) v with a `MaskSpec`; differentiable in q, k, v.

    `interpret=True` runs the same kernels through the Pallas interpreter
    (any backend, slow; for tests). Shapes as in `attention`.
    """
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4:
        raise ValueError(f"flash_attention expects q [B,Lq,H,D] and k, v [B,Lk,H,D] "
                         f"of one shape; got q {q.shape}, k {k.shape}, v {v.shape}")
    b, lq, h, d = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (b, h, d):
        raise ValueError(f"q {q.shape} and k {k.shape} differ in batch, heads or head dim")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    lk = k.shape[1]
    bs = block_sizes or BlockSizes()
    bq, bk = _fit(bs.block_q, lq), _fit(bs.block_k, lk)
    bq_bwd, bk_bwd = _fit(bs.block_q_bwd, lq), _fit(bs.block_k_bwd, lk)
    # Tiles are powers of two, so padding to the larger one fits both passes.
    lq_pad, lk_pad = _round_up(lq, max(bq, bq_bwd)), _round_up(lk, max(bk, bk_bwd))
    d_pad = max(_MIN_BLOCK, pl.next_power_of_2(d))
    masked = lk_pad != lk or (mask is not None and (
        mask.kv_len is not None or mask.q_chunk is not None))
    cfg = _Config(block_q=bq, block_k=bk, block_q_bwd=bq_bwd, block_k_bwd=bk_bwd,
                  num_stages=bs.num_stages, scale=d ** -0.5, masked=masked,
                  interpret=interpret)
    q_id, kv_id = _ids(mask, b, lq, lk, lq_pad, lk_pad)
    pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, d_pad - d)))
    o = _flash(pad(q, lq_pad), pad(k, lk_pad), pad(v, lk_pad), q_id, kv_id, cfg)
    return o[:, :lq, :, :d]
