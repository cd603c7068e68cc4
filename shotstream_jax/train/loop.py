"""The training loop: data, resumable orbax checkpoints, metrics.jsonl, TensorBoard, progress.

WORKDIR layout:
  checkpoints/<step>/   orbax: train state + the grain iterator position (async, every N, keep K)
  metrics.jsonl         one JSON object per step: step, loss, stage losses, grad_norm, step_time
  tensorboard/          event files (tensorboardX)
  export/               the trained network as a model directory, written at the end
  toy_data/, ode_pairs/ generated when the config names no data (toy runs)
Resuming from WORKDIR continues at the same step, data position and RNG; metrics
lines past the restored step (written after the last checkpoint) are dropped.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from tqdm import tqdm

from shotstream_jax import sharding
from shotstream_jax.data import pipeline
from shotstream_jax.train import stages

log = logging.getLogger(__name__)


def _metrics_file(workdir: str, start: int) -> str:
    """metrics.jsonl with every line of a step > `start` removed (they are about to be redone)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            keep = [line for line in f if line.strip() and json.loads(line)["step"] <= start]
        with open(path, "w") as f:
            f.writelines(keep)
    return path


def _jsonable(m: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in m.items()}


def _tensorboard(workdir: str):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        log.warning("tensorboardX is not installed: no TensorBoard events (metrics.jsonl is still written)")
        return None
    return SummaryWriter(os.path.join(workdir, "tensorboard"))


def _source(cfg, workdir: str, mesh):
    """Example source of the stage; ode_init reads ODE pairs (made first in toy runs without any)."""
    if cfg.stage == "ode_init":
        ode_dir = cfg.train.ode_dir or os.path.join(workdir, "ode_pairs")
        if not cfg.train.ode_dir and not os.path.isdir(ode_dir) and cfg.size == "toy":
            log.info("toy run without ODE pairs: writing them to %s first", ode_dir)
            write_ode_pairs(cfg, workdir, mesh, ode_dir)
        return pipeline.PreencodedSource(ode_dir)
    min_shots = cfg.train.num_shots if cfg.stage == "dmd_inter" else 2
    return pipeline.source(cfg, workdir, min_shots=min_shots)


def _per_process_batch(cfg, mesh) -> int:
    b, shards = cfg.train.batch_size, sharding.batch_shards(mesh)
    if b % shards or b % jax.process_count():
        raise ValueError(f"train.batch_size={b} must be a multiple of mesh data x fsdp = {shards} and of the "
                         f"{jax.process_count()} processes; change --config.train.batch_size or --config.mesh.*")
    return b // jax.process_count()


def train(cfg, workdir: str, progress: bool = True) -> dict:
    """Run `cfg.stage` in `workdir` up to `cfg.train.steps` steps; returns the last step's metrics."""
    sharding.maybe_initialize_distributed()
    os.makedirs(workdir, exist_ok=True)
    mesh = sharding.make_mesh(cfg.mesh)
    if cfg.stage == "ode_pairs":
        return write_ode_pairs(cfg, workdir, mesh, cfg.train.ode_dir or os.path.join(workdir, "ode_pairs"))
    if cfg.stage not in stages.STAGES:
        raise ValueError(f"stage {cfg.stage!r} is not a training stage; use one of {sorted(stages.STAGES)} or ode_pairs")
    stage = stages.STAGES[cfg.stage](cfg, mesh)
    src = stage.source(workdir) if cfg.stage == "vae" else _source(cfg, workdir, mesh)
    it = iter(pipeline.dataset(src, _per_process_batch(cfg, mesh), cfg.data.shuffle_seed,
                               jax.process_index(), jax.process_count()))

    mngr = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=cfg.train.keep_checkpoints,
                                             save_interval_steps=cfg.train.checkpoint_every,
                                             enable_async_checkpointing=True))
    latest = mngr.latest_step()
    if latest is None:
        state, state_sh = stage.init_state()
        start = 0
    else:
        abstract, state_sh = stage.abstract_state()
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
        restored = mngr.restore(latest, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        state, start = restored.state, latest
        it.set_state(restored.data)
        log.info("resumed %s from step %d", workdir, start)
    consts = stage.init_consts()

    metrics_path = _metrics_file(workdir, start)
    writer = _tensorboard(workdir) if jax.process_index() == 0 else None
    bar = tqdm(total=cfg.train.steps, initial=start, desc=cfg.stage, unit="step",
               disable=not progress or jax.process_index() != 0)
    step_fn, m = None, {}
    for s in range(start, cfg.train.steps):
        t0 = time.perf_counter()
        batch = next(it)
        if step_fn is None:
            step_fn = stage.compile(state_sh, consts, batch)
        state, out = step_fn(state, consts, sharding.shard_batch(mesh, batch))
        m = {k: float(v) for k, v in jax.device_get(out).items()}
        m.update(step=s + 1, step_time=time.perf_counter() - t0)
        if jax.process_index() == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(_jsonable(m)) + "\n")
            if writer is not None and (s + 1) % cfg.train.log_every == 0:
                for k, v in m.items():
                    if k != "step" and math.isfinite(v):
                        writer.add_scalar(f"{cfg.stage}/{k}", v, s + 1)
        bar.set_postfix(loss=f"{m['loss']:.4f}")
        bar.update(1)
        mngr.save(s + 1, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 data=ocp.args.JsonSave(it.get_state())),
                  force=s + 1 == cfg.train.steps)
    bar.close()
    mngr.wait_until_finished()
    mngr.close()
    if writer is not None:
        writer.close()
    if jax.process_count() == 1:
        stage.export(state, os.path.join(workdir, "export"))
    return m


def write_ode_pairs(cfg, workdir: str, mesh, out_dir: str) -> dict:
    """Teacher trajectories with CFG for every example of the data, one .npz each (skips existing ones).

    Each file holds the example's fields with `target` replaced by the teacher's
    sample and `ode` [S, T, h, w, C] its states at the student's timesteps.
    """
    src = pipeline.source(cfg, workdir)
    stage = stages.DmdStage(cfg, mesh)
    graphdef, params = stage.critic.full_graphdef, stage.teacher_params()
    uncond = stages.negative_embedding(cfg)
    os.makedirs(out_dir, exist_ok=True)

    @jax.jit
    def sample(params, ex, key):
        return stages.ode_trajectory(cfg, nnx.merge(graphdef, params), ex, key, uncond)

    written = 0
    for i in tqdm(range(jax.process_index(), len(src), jax.process_count()), desc="ode_pairs", unit="example"):
        path = os.path.join(out_dir, f"{i:06d}.npz")
        if os.path.exists(path):
            continue
        ex = src[i]
        if ex is None:
            continue
        rec, x0 = jax.device_get(sample(params, ex, jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed), i)))
        tmp = path + ".tmp.npz"
        np.savez(tmp, **dict(ex, target=np.asarray(x0), ode=np.asarray(rec)))
        os.replace(tmp, path)
        written += 1
    log.info("ODE pairs: wrote %d to %s", written, out_dir)
    return {"step": len(src), "written": written, "loss": 0.0}
