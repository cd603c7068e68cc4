"""The Pallas attention kernels (TPU splash, our GPU flash kernel) on a device mesh.

A Mosaic or Triton kernel is a single-device program that XLA cannot
partition: inside a sharded jit it fails to lower ("wrap the call in a
shard_map"). `on_mesh` runs the kernel per shard with `jax.shard_map` over the
mesh set by `jax.set_mesh` (the trainer sets it around its step), as
maxdiffusion does:
  * batch over the data-parallel axes (data, fsdp), heads over `tensor`;
  * queries over `context` (sequence parallelism); keys and values stay whole
    on every device, so XLA gathers them over `context` before the call;
  * an axis stays unsplit when it does not divide the dimension; inside the
    per-example vmap of training (`sharding.vmap_batch`) that vmap carries the
    batch axes, and the kernel's own batch dimension stays whole.
Mask fields follow their arrays: `q_*` fields of length Lq split like the
queries, fields with a leading batch dimension like the batch, the rest
(key chunk ids) whole. Without a mesh, or with one device, the kernel is
called directly.
"""
from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P

from shotstream_jax import sharding

HEAD_AXES = ("tensor",)
SEQ_AXES = ("context",)


def on_mesh(kernel, q: jax.Array, k: jax.Array, v: jax.Array, mask=None, **kwargs) -> jax.Array:
    """kernel(q, k, v, mask, **kwargs) run per shard of the current mesh; q [B, Lq, H, D], k, v [B, Lk, H, D]."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return kernel(q, k, v, mask, **kwargs)
    b, lq, h, _ = q.shape
    batch = sharding.split_axes(mesh, sharding.batch_axes(), b)
    heads, seq = sharding.split_axes(mesh, HEAD_AXES, h), sharding.split_axes(mesh, SEQ_AXES, lq)
    q_spec, kv_spec = P(batch, seq, heads, None), P(batch, None, heads, None)

    def mask_spec(path, x):
        name = str(getattr(path[-1], "name", path[-1]))
        if name.startswith("q_") and x.ndim == 1 and x.shape[0] == lq:
            return P(seq)
        if x.ndim >= 1 and x.shape[0] == b and not name.startswith(("q_", "kv_chunk")):
            return P(batch, *([None] * (x.ndim - 1)))
        return P(*([None] * x.ndim))

    m_spec = None if mask is None else jax.tree_util.tree_map_with_path(mask_spec, mask)
    fn = jax.shard_map(lambda q, k, v, m: kernel(q, k, v, m, **kwargs), mesh=mesh,
                       in_specs=(q_spec, kv_spec, kv_spec, m_spec), out_specs=q_spec, check_vma=False)
    return fn(q, k, v, mask)
