"""The training loop: data, resumable orbax checkpoints, metrics.jsonl, TensorBoard, progress.

WORKDIR (a local folder or gs://...) layout:
  checkpoints/<step>/   orbax: train state + every process's grain iterator position (async, every N, keep K)
  metrics.jsonl         one JSON object per step: step, loss, stage losses, grad_norm, step_time,
                        tokens_per_s, mfu (on accelerators perf.py knows)
  tensorboard/          event files (tensorboardX)
  export/               the trained network as a model directory, written at the end
  compilation_cache/    XLA's persistent cache (CLI default); profile/: --profile_steps traces
  toy_data/, ode_pairs/ generated when the config names no data (toy runs)
Resuming from WORKDIR continues at the same step, data position and RNG; metrics
lines past the restored step (written after the last checkpoint) are dropped.
Every process of a multi-host job runs this same code (see docs/training.md).
"""
from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from shotstream_jax import checkpoint, model_dir, perf, sharding
from shotstream_jax.data import pipeline
from shotstream_jax.train import stages

log = logging.getLogger(__name__)


def _metrics_file(workdir: epath.Path, start: int) -> epath.Path:
    """metrics.jsonl with every line of a step > `start` removed (they are about to be redone)."""
    path = workdir / "metrics.jsonl"
    if path.exists():
        lines = path.read_text().splitlines()
        path.write_text("".join(f"{x}\n" for x in lines if x.strip() and json.loads(x)["step"] <= start))
    return path


def _jsonable(m: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in m.items()}


def _tensorboard(workdir: str):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        log.warning("tensorboardX is not installed: no TensorBoard events (metrics.jsonl is still written)")
        return None
    return SummaryWriter(str(workdir / "tensorboard"))


def _agreed(flag: bool) -> bool:
    """Process 0's value of `flag` on every process (decisions that change which collectives run)."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def _source(cfg, workdir: str, mesh):
    """Example source of the stage; ode_init reads ODE pairs (made first in toy runs without any)."""
    if cfg.stage == "ode_init":
        ode_dir = checkpoint.as_path(cfg.train.ode_dir or workdir / "ode_pairs")
        if not cfg.train.ode_dir and cfg.size == "toy" and not _agreed(ode_dir.is_dir()):
            log.info("toy run without ODE pairs: writing them to %s first", ode_dir)
            write_ode_pairs(cfg, workdir, mesh, ode_dir)
        return pipeline.PreencodedSource(ode_dir, keep_in_memory=cfg.data.keep_in_memory)
    min_shots = cfg.train.num_shots if cfg.stage == "dmd_inter" else 2
    return _primary_first("toy_data", lambda: pipeline.source(cfg, str(workdir), min_shots=min_shots))


def _check_batch(cfg, mesh) -> int:
    b, shards, accum = cfg.train.batch_size, sharding.batch_shards(mesh), cfg.train.get("grad_accum", 1)
    if b % (shards * accum):
        raise ValueError(f"train.batch_size={b} must be a multiple of mesh data x fsdp = {shards} times "
                         f"train.grad_accum={accum}; change --config.train.batch_size, grad_accum or --config.mesh.*")
    return b


def _primary_first(name: str, fn):
    """fn() on process 0, then (once it is done) on the others: shared files are made once."""
    if jax.process_index() == 0:
        out = fn()
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
    if jax.process_index() != 0:
        out = fn()
    return out


class _Preemption:
    """SIGTERM (preemption, scancel) seen at a step boundary: checkpoint there and stop.

    With several processes JAX's preemption sync manager (started by
    jax.distributed) catches the signal and names one step at which every
    host stops; a single process catches it here.
    """

    def __init__(self):
        self.hit = False
        self.previous = None
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        log.warning("SIGTERM: checkpointing at the end of this step, then stopping")
        self.hit = True

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.hit

    def close(self):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


class _Metrics:
    """metrics.jsonl, TensorBoard and the progress bar, one step late so that the host never waits on a step.

    `add(step, out)` keeps the step's device outputs and writes the previous
    step's: by then the next step has been dispatched. step_time is the time
    between two steps' outputs being ready (the step time once steady).
    """

    def __init__(self, cfg, workdir: epath.Path, start: int, progress: bool):
        self.cfg, self.primary = cfg, jax.process_index() == 0
        self.path = _metrics_file(workdir, start) if self.primary else None
        self.writer = _tensorboard(workdir) if self.primary else None
        self.bar = tqdm(total=cfg.train.steps, initial=start, desc=cfg.stage, unit="step",
                        disable=not progress or not self.primary)
        flops, tokens = perf.train_example_flops(cfg)
        b = cfg.train.batch_size
        self.flops, self.tokens = flops * b, tokens * b
        self.peak = perf.peak_flops(jax.devices()[0].device_kind)
        self.pending, self.last, self.t_prev = None, {}, time.perf_counter()

    def add(self, step: int, out) -> None:
        self.flush()
        self.pending = (step, out)

    def flush(self) -> None:
        if self.pending is None:
            return
        step, out = self.pending
        self.pending = None
        m = {k: float(v) for k, v in jax.device_get(out).items()}
        now = time.perf_counter()
        dt, self.t_prev = now - self.t_prev, now
        m.update(step=step, step_time=dt, tokens_per_s=self.tokens / dt)
        if self.peak:
            m["mfu"] = self.flops / (dt * self.peak * jax.device_count())
        self.last = m
        if self.primary:
            with self.path.open("a") as f:
                f.write(json.dumps(_jsonable(m)) + "\n")
            if self.writer is not None and step % self.cfg.train.log_every == 0:
                for k, v in m.items():
                    if k != "step" and math.isfinite(v):
                        self.writer.add_scalar(f"{self.cfg.stage}/{k}", v, step)
        self.bar.set_postfix(loss=f"{m['loss']:.4f}")
        self.bar.update(1)

    def close(self) -> dict:
        self.flush()
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        return self.last


def train(cfg, workdir, progress: bool = True, profile_steps: tuple[int, int] | None = None) -> dict:
    """Run `cfg.stage` in `workdir` up to `cfg.train.steps` steps; returns the last step's metrics.

    `profile_steps` (first, last): a jax.profiler trace of those steps in WORKDIR/profile.
    """
    sharding.maybe_initialize_distributed()
    workdir = checkpoint.as_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = sharding.make_mesh(cfg.mesh)
    if cfg.stage == "ode_pairs":
        return write_ode_pairs(cfg, workdir, mesh, cfg.train.ode_dir or workdir / "ode_pairs")
    if cfg.stage not in stages.STAGES:
        raise ValueError(f"stage {cfg.stage!r} is not a training stage; use one of {sorted(stages.STAGES)} or ode_pairs")
    stage = stages.STAGES[cfg.stage](cfg, mesh)
    src = stage.source(workdir) if isinstance(stage, stages.EncoderStage) else _source(cfg, workdir, mesh)
    batch_size = _check_batch(cfg, mesh)
    it = iter(pipeline.dataset(src, batch_size, cfg.data.shuffle_seed, sharding.process_rows(mesh, batch_size),
                              num_threads=cfg.data.get("read_threads", 2)))

    def manager():
        return ocp.CheckpointManager(
            workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=cfg.train.keep_checkpoints,
                                                 save_interval_steps=cfg.train.checkpoint_every,
                                                 enable_async_checkpointing=True))

    mngr = manager()
    latest = mngr.latest_step()
    if latest is None:
        state, state_sh = stage.init_state()
        start = 0
    else:
        abstract, state_sh = stage.abstract_state()
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
        data_dir = workdir / "checkpoints" / str(latest) / "data"
        mine = data_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        # Checkpoints written before per-process iterator files hold one JSON iterator state.
        legacy = jax.process_count() == 1 and not mine.exists() and (data_dir / "metadata").exists()
        data_args = ocp.args.JsonRestore() if legacy else grain.checkpoint.CheckpointRestore(it)
        restored = mngr.restore(latest, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                data=data_args))
        if legacy:
            it.set_state(restored.data)
            # The manager binds "data" to the handler it restored with; later saves need grain's.
            mngr.close()
            mngr = manager()
        state, start = restored.state, latest
        log.info("resumed %s from step %d", workdir, start)
    consts = stage.init_consts()

    metrics = _Metrics(cfg, workdir, start, progress)
    preemption = _Preemption()
    step_fn, last = None, start
    for s in range(start, cfg.train.steps):
        if profile_steps and s == profile_steps[0]:
            jax.profiler.start_trace(str(workdir / "profile"))
        batch = same_length_on_every_host(next(it))
        # The mesh is set while the step traces: shard_map'd kernels and activation constraints read it.
        with jax.set_mesh(mesh):
            if step_fn is None:
                step_fn = stage.compile(state_sh, consts, batch)
            state, out = step_fn(state, consts, sharding.shard_batch(mesh, batch, batch_size))
        metrics.add(s + 1, out)
        if profile_steps and s == profile_steps[1]:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
        last = s + 1
        stop = preemption.reached(last)
        mngr.save(last, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                data=grain.checkpoint.CheckpointSave(it)),
                  force=last == cfg.train.steps or stop)
        if stop:
            log.warning("preempted: checkpoint of step %d written, stopping", last)
            break
    m = metrics.close()
    preemption.close()
    mngr.wait_until_finished()
    mngr.close()
    if last == cfg.train.steps:
        export(cfg, stage, state, workdir / "export")
    return m


def same_length_on_every_host(batch: dict) -> dict:
    """Each host cut its rows of the global batch to their own shortest target; with several
    processes, cut every host's rows to the shortest of the whole batch so the shards agree."""
    if jax.process_count() == 1 or "target_frames" not in batch:
        return batch
    n = int(np.min(multihost_utils.process_allgather(np.int32(batch["target"].shape[1]))))
    return pipeline.trim_batch(batch, n)


def export(cfg, stage, state, out_dir: str) -> None:
    """Write the trained network of `state` as a model directory (LoRA merged in), from every process.

    The merge runs on the mesh and orbax writes each process's shards, so no
    host ever holds the whole network. config.json is written last, by
    process 0: a directory without it is an unfinished export.
    """
    if isinstance(stage, stages.EncoderStage):  # vae, text: a full model directory around it (one process)
        stage.export(state, out_dir)
        return
    params = jax.jit(lambda g, f: nnx.state(stage.gen.module(g, f), nnx.Param).to_pure_dict())(
        state["gen"], state["gen_frozen"])
    out_dir = checkpoint.as_path(out_dir)
    _primary_first("export_clear", lambda: jax.process_index() == 0 and out_dir.exists() and out_dir.rmtree())
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(out_dir / "dit", params)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        meta = model_dir.dit_meta(stage.gen.dit_cfg, cfg)
        if cfg.data.encoder_dir:  # with the encoders' VAE, umT5 and tokenizer: a directory that generates
            meta.update(model_dir.copy_encoders(cfg.data.encoder_dir, out_dir))
        checkpoint.write_json(out_dir / "config.json", meta)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("export_done")
    log.info("exported %s", out_dir)


def export_checkpoint(cfg, workdir: str, out_dir: str, step: int | None = None) -> int:
    """Export the network of checkpoint `step` (default the latest) of `workdir` to `out_dir`; returns the step."""
    sharding.maybe_initialize_distributed()
    mesh = sharding.make_mesh(cfg.mesh)
    stage = stages.STAGES[cfg.stage](cfg, mesh)
    mngr = ocp.CheckpointManager(checkpoint.as_path(workdir) / "checkpoints")
    step = mngr.latest_step() if step is None else step
    if step is None or step not in mngr.all_steps():
        raise FileNotFoundError(f"{workdir}/checkpoints: no checkpoint {'at all' if step is None else step} "
                                f"(steps there: {list(mngr.all_steps())})")
    abstract, state_sh = stage.abstract_state()
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
    mngr.close()
    export(cfg, stage, state, out_dir)
    return step


def write_ode_pairs(cfg, workdir: str, mesh, out_dir: str) -> dict:
    """Teacher trajectories with CFG for every example of the data (the first `train.ode_examples` if set),
    one .npz each (skips finished batches).

    Each file holds the example's fields with `target` replaced by the teacher's
    sample and `ode` [S, T, h, w, C] its states at the student's timesteps.
    One job over all processes: global batches of one example per data shard,
    the same number of them on every host (the last one wraps around to the
    first examples, whose results are not written again), each row written by
    the first process holding it. Example i always uses key fold_in(seed, i).
    """
    src = _primary_first("ode_pairs_source", lambda: pipeline.source(cfg, str(workdir)))
    stage = stages.DmdStage(cfg, mesh)
    graphdef, params = stage.critic.full_graphdef, stage.teacher_params()
    uncond = jax.device_put(stages.negative_embedding(cfg), sharding.replicated(mesh))
    out_dir = checkpoint.as_path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n, b = len(src), sharding.batch_shards(mesh)
    if cfg.train.ode_examples:
        n = min(n, cfg.train.ode_examples)
    first, count = sharding.process_rows(mesh, b)
    owner = _row_owners(mesh, b)
    path = lambda i: out_dir / f"{i:06d}.npz"
    # Decided once, on process 0, so that every host skips the same batches.
    done = [all(path(i).exists() for i in range(k * b, min(n, (k + 1) * b))) for k in range(-(-n // b))]
    todo = [k for k, d in enumerate(done) if not d]
    if jax.process_count() > 1:
        mask = multihost_utils.broadcast_one_to_all(np.asarray(done, np.int32))
        todo = [k for k, d in enumerate(mask) if not d]

    def one(params, uncond, ex, key):
        return stages.ode_trajectory(cfg, nnx.merge(graphdef, params), ex, key, uncond)

    sample = jax.jit(jax.vmap(one, in_axes=(None, None, 0, 0)))
    written, last_ok = 0, None
    for k in tqdm(todo, desc="ode_pairs", unit="batch", disable=jax.process_index() != 0):
        idx = [(k * b + r) % n for r in range(first, first + count)]
        exs = [src[i] for i in idx]
        last_ok = next((e for e in exs if e is not None), last_ok)
        if last_ok is None:
            raise ValueError(f"ode_pairs: examples {idx} are all unreadable; check the data")
        local = {f: np.stack([(e if e is not None else last_ok)[f] for e in exs]) for f in last_ok}
        keys = np.stack([jax.random.key_data(jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed), i)) for i in idx])
        batch = sharding.shard_batch(mesh, dict(local, key=keys), b)
        key = batch.pop("key")
        rec, x0 = sample(params, uncond, batch, key)
        rows = {}
        for arr, name in ((rec, "ode"), (x0, "target")):
            for shard in arr.addressable_shards:
                start, stop, _ = shard.index[0].indices(b)
                for r, v in zip(range(start, stop), np.asarray(shard.data)):
                    rows.setdefault(r, {})[name] = v
        for r in range(first, first + count):
            i, ex = k * b + r, exs[r - first]
            if i >= n or ex is None or owner[r] != jax.process_index():
                continue
            tmp = out_dir / f".{i:06d}.tmp.npz"
            with tmp.open("wb") as f:
                np.savez(f, **dict(ex, **rows[r]))
            tmp.replace(path(i))
            written += 1
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("ode_pairs_done")
    log.info("ODE pairs: process %d wrote %d to %s", jax.process_index(), written, out_dir)
    return {"step": n, "written": written, "loss": 0.0}


def _row_owners(mesh, batch_size: int) -> list[int]:
    """For each row of a global batch, the lowest process index holding it: the one that writes it."""
    owner = [jax.process_count()] * batch_size
    for d, idx in sharding.batch_sharding(mesh, 1).devices_indices_map((batch_size,)).items():
        for r in range(*idx[0].indices(batch_size)[:2]):
            owner[r] = min(owner[r], d.process_index)
    return owner
