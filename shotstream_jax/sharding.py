"""Device mesh and sharding rules for training.

The mesh has three axes, sized by the config's `mesh` section:
  data    pure data parallelism (parameters replicated),
  fsdp    data parallelism with parameters and optimizer state sharded (ZeRO-3 style),
  tensor  heads / MLP hidden split across devices.
Parameters carry logical axis names (`out_sharding` metadata of WanDiT);
`RULES` maps them to mesh axes, so the model code never names a device axis.
Activations and batches are split over (data, fsdp) on their leading axis.
"""
from __future__ import annotations

import logging
import math
import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

AXES = ("data", "fsdp", "tensor")
RULES = {"layers": None, "embed": "fsdp", "heads": "tensor", "mlp": "tensor"}
BATCH = ("data", "fsdp")


def maybe_initialize_distributed() -> None:
    """`jax.distributed.initialize()` when the environment describes a multi-process job.

    JAX reads the coordinator from the environment: TPU pod metadata, SLURM
    (srun), or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.
    """
    env = os.environ
    multi = (env.get("JAX_COORDINATOR_ADDRESS") or int(env.get("SLURM_NTASKS", "1")) > 1
             or "," in env.get("TPU_WORKER_HOSTNAMES", "") or env.get("SHOTSTREAM_DISTRIBUTED") == "1")
    if multi and not jax.distributed.is_initialized():
        kw = {}
        if env.get("JAX_COORDINATOR_ADDRESS") and env.get("JAX_PROCESS_ID"):
            kw = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env["JAX_PROCESS_ID"]))
        jax.distributed.initialize(**kw)
        log.info("distributed: process %d of %d", jax.process_index(), jax.process_count())


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default all); the sizes must multiply to their count."""
    shape = tuple(int(mesh_cfg[a]) for a in AXES)
    devices = jax.devices() if devices is None else devices
    n = len(devices)
    if math.prod(shape) != n:
        raise ValueError(f"mesh data={shape[0]} x fsdp={shape[1]} x tensor={shape[2]} = {math.prod(shape)} "
                         f"devices, but {n} are available; set --config.mesh.* so that they multiply to {n}")
    return Mesh(np.asarray(devices).reshape(shape), AXES)


def _spec(names, shape, mesh: Mesh) -> P:
    """Logical names -> PartitionSpec; a dimension the mesh axis does not divide stays replicated."""
    axes = []
    for name, dim in zip(names, shape):
        axis = RULES.get(name) if name else None
        axes.append(axis if axis and dim % mesh.shape[axis] == 0 else None)
    return P(*axes)


def logical_names(module: nnx.Module) -> dict:
    """Pure dict (like `nnx.state(module).to_pure_dict()`) of each parameter's logical axis names."""
    state = nnx.state(module, nnx.Param)
    return jax.tree.map(lambda v: tuple(v.get_metadata().get("out_sharding") or (None,) * v.ndim),
                        state, is_leaf=lambda x: isinstance(x, nnx.Variable)).to_pure_dict()


def tree_shardings(mesh: Mesh, names: dict, shapes) -> dict:
    """NamedSharding per leaf of `shapes` (a pytree of arrays/ShapeDtypeStructs) from `names`."""
    return jax.tree.map(lambda n, s: NamedSharding(mesh, _spec(n, s.shape, mesh)), names, shapes,
                        is_leaf=lambda x: isinstance(x, tuple))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def batch_shards(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def shard_batch(mesh: Mesh, batch: dict) -> dict:
    """This process's numpy batch -> global arrays split over (data, fsdp)."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
            for k, v in batch.items()}
