"""Device mesh and sharding rules for training.

The mesh has four axes, sized by the config's `mesh` section:
  data     pure data parallelism (parameters replicated; `dcn_data` of it across slices),
  fsdp     data parallelism with parameters and optimizer state sharded (ZeRO-3 style),
  context  the token sequence of activations split across devices (long videos),
  tensor   heads / MLP hidden split across devices.
Parameters carry logical axis names (`out_sharding` metadata of WanDiT);
`RULES` maps them to mesh axes, so the model code never names a device axis.
Activations and batches are split over (data, fsdp) on their leading axis.
"""
from __future__ import annotations

import contextvars
import importlib.util
import logging
import math
import os

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

AXES = ("data", "fsdp", "context", "tensor")
RULES = {"layers": None, "embed": "fsdp", "heads": "tensor", "mlp": "tensor"}
BATCH = ("data", "fsdp")


def _tpu_host() -> bool:
    """TPU chips on this host and libtpu installed, found without starting a JAX backend.

    Cloud TPU VMs do not set TPU_WORKER_HOSTNAMES: JAX finds the pod's workers
    from the VM metadata inside `jax.distributed.initialize()`, which must run
    before anything starts the backend, so `jax.default_backend()` cannot be asked.
    """
    if "tpu" in os.environ.get("JAX_PLATFORMS", "").split(","):
        return True
    if importlib.util.find_spec("libtpu") is None:
        return False
    try:
        from jax._src import hardware_utils
        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except (ImportError, AttributeError, OSError):
        return False


def distributed_env() -> dict | None:
    """Keyword arguments for `jax.distributed.initialize` when this is a multi-process job, else None.

    A job is multi-process when it runs on a TPU VM (single-host slices too:
    initialize() is cheap there and the async checkpointer wants the client),
    in an `srun` step of more than one task, under Open MPI, or when
    JAX_COORDINATOR_ADDRESS is set (with JAX_NUM_PROCESSES and JAX_PROCESS_ID,
    the variables launch/*.sh and the multi-process test set). Empty kwargs
    let JAX read the cluster (TPU metadata, SLURM, Open MPI) itself.
    """
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in env]
        if missing and not (env.get("SLURM_JOB_ID") or env.get("OMPI_COMM_WORLD_SIZE")):
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} not; set all three "
                             "(launch/slurm_gpu.sh shows how) or none")
        return {k: int(env[v]) for k, v in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID"))
                if v in env}
    # SLURM_STEP_NUM_TASKS, not SLURM_NTASKS: only `srun` starts the tasks (a batch script is one process).
    if int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        return {}
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return {}
    if _tpu_host():
        return {}
    return None


def maybe_initialize_distributed() -> None:
    """`jax.distributed.initialize()` when `distributed_env()` says this is a multi-process job."""
    kw = distributed_env()
    if kw is None or jax.distributed.is_initialized():
        return
    jax.distributed.initialize(**kw)
    log.info("distributed: process %d of %d, %d local devices of %d", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """The (data, fsdp, context, tensor) mesh over `devices` (default all), in `device_grid`'s order."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(device_grid(mesh_cfg, devices), AXES)


def device_grid(mesh_cfg, devices) -> np.ndarray:
    """`devices` arranged in the (data, fsdp, context, tensor) shape of the config's `mesh` section.

    The order comes from `mesh_utils.create_device_mesh`, which puts the last
    axes (tensor, context) on the fastest links of the physical topology.
    With `mesh.dcn_data` > 1 (multislice: several TPU slices joined by the
    data-centre network) the data axis is dcn_data slices x data / dcn_data
    within each (`create_hybrid_device_mesh`): only data-parallel gradient
    sums cross slices. Devices that all sit in one slice (GPU nodes, CPU
    processes) take each process as a slice.
    """
    shape = tuple(int(mesh_cfg.get(a, 1)) for a in AXES)
    n = len(devices)
    if math.prod(shape) != n:
        dims = " x ".join(f"{a}={d}" for a, d in zip(AXES, shape))
        raise ValueError(f"mesh {dims} = {math.prod(shape)} devices, but {n} are available; "
                         f"set --config.mesh.* so that they multiply to {n}")
    dcn = int(mesh_cfg.get("dcn_data", 1))
    if dcn > 1:
        if shape[0] % dcn:
            raise ValueError(f"mesh.data={shape[0]} must be a multiple of mesh.dcn_data={dcn} (the slice count)")
        # GPU nodes and CPU processes report no slice index, or slice 0 on every device.
        by_process = len({getattr(d, "slice_index", 0) for d in devices}) == 1
        slices = len({d.process_index if by_process else d.slice_index for d in devices})
        if slices != dcn:
            raise ValueError(f"mesh.dcn_data={dcn} but the devices span {slices} "
                             f"{'processes' if by_process else 'slices'}; set mesh.dcn_data={slices}")
        ici = (shape[0] // dcn,) + shape[1:]
        return mesh_utils.create_hybrid_device_mesh(ici, (dcn,) + (1,) * (len(AXES) - 1), devices,
                                                    process_is_granule=by_process, allow_split_physical_axes=True)
    try:
        return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (AssertionError, NotImplementedError, ValueError):
        # Topologies mesh_utils does not know (some CPU / GPU device counts): plain order.
        return np.asarray(devices).reshape(shape)


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


def process_rows(mesh: Mesh, batch_size: int) -> tuple[int, int]:
    """(first, count): the rows of each global batch whose shards live on this process's devices.

    Processes whose devices hold the same batch shards (a tensor or context
    axis across hosts) get the same rows and load the same examples: data is
    loaded per data-parallel group, not per process.
    """
    sh = batch_sharding(mesh, 1)
    spans = sorted({idx[0].indices(batch_size)[:2] for idx in sh.addressable_devices_indices_map((batch_size,)).values()})
    first, end = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != end - first:
        raise ValueError(f"process {jax.process_index()} holds batch rows {spans} of {batch_size}, which are not "
                         "contiguous; order the mesh so that each host's devices hold neighbouring data/fsdp shards")
    return first, end - first


def shard_batch(mesh: Mesh, batch: dict, batch_size: int | None = None) -> dict:
    """This process's numpy rows (`process_rows`) of a global batch of `batch_size` -> global arrays.

    `batch_size` defaults to the rows given (one process). Every device takes
    its shard out of the local rows, so replicas on other hosts see the same data.
    """
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        b = v.shape[0] if batch_size is None else batch_size
        first, count = process_rows(mesh, b)
        if v.shape[0] != count:
            raise ValueError(f"batch field {k!r} has {v.shape[0]} rows; this process holds rows "
                             f"{first}..{first + count - 1} of {b}")

        def rows(idx, v=v, b=b, first=first):
            start, stop, _ = idx[0].indices(b)
            return v[(slice(start - first, stop - first),) + tuple(idx[1:])]

        out[k] = jax.make_array_from_callback((b,) + v.shape[1:], batch_sharding(mesh, v.ndim), rows)
    return out


_IN_BATCH_VMAP = contextvars.ContextVar("in_batch_vmap", default=False)


def vmap_batch(fn):
    """jax.vmap(fn) whose mapped axis is split over the batch axes of the current mesh (if one is set).

    Sharding constraints and shard_map'd kernels inside `fn` then see the
    per-example axis as sharded instead of gathering it on every device, and
    must not split their own batch dimension over those axes again
    (`batch_axes`).
    """
    if jax.sharding.get_abstract_mesh().empty:
        return jax.vmap(fn)

    def per_example(*args):
        token = _IN_BATCH_VMAP.set(True)
        try:
            return fn(*args)
        finally:
            _IN_BATCH_VMAP.reset(token)

    return jax.vmap(per_example, spmd_axis_name=BATCH)


def batch_axes() -> tuple[str, ...]:
    """The mesh axes a batch dimension may be split over here: none inside `vmap_batch`, which holds them."""
    return () if _IN_BATCH_VMAP.get() else BATCH


def constrain_tokens(x: jax.Array) -> jax.Array:
    """Activations [B, L, D] at a block boundary: batch over (data, fsdp), tokens over context, D whole.

    A no-op without a mesh (set by `jax.set_mesh`); an axis that does not
    divide its dimension is left out (the batch of 1 inside `vmap_batch`).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or x.ndim != 3:
        return x
    spec = P(split_axes(mesh, batch_axes(), x.shape[0]), split_axes(mesh, ("context",), x.shape[1]), None)
    return jax.lax.with_sharding_constraint(x, spec)


def split_axes(mesh, names, dim: int):
    """The axes among `names` (those of size > 1) that split `dim` evenly, as one PartitionSpec entry; else None."""
    axes = tuple(a for a in names if a in mesh.axis_names and mesh.shape[a] > 1)
    if not axes or dim % math.prod(mesh.shape[a] for a in axes):
        return None
    return axes if len(axes) > 1 else axes[0]
