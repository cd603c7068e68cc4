"""Step time and peak memory of every training stage.

    python benchmarks/train_step.py [--size=toy] [--steps=5] [--stages=teacher,ode_init,dmd_intra,dmd_inter]

Each stage runs in its own subprocess (so peak memory is its own) on one
device with batch 1 of random inputs shaped like the config's examples (no
data or encoders needed; the Wan sizes run with remat): compile time, median step time of `--steps` steps after
the first, and peak memory (device memory stats where the backend has them,
else the process's peak RSS). Prints one line per figure.
"""
from __future__ import annotations

import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # a checkout needs no install

flags.DEFINE_string("size", "toy", "Config size (toy | wan_1_3b | wan_14b).")
flags.DEFINE_integer("steps", 5, "Timed steps per stage (after the compiling one).")
flags.DEFINE_string("stages", "teacher,ode_init,dmd_intra,dmd_inter", "Stages to measure.")
flags.DEFINE_string("one", "", "Internal: measure this stage in this process and print JSON.")
FLAGS = flags.FLAGS


def synthetic_batch(cfg, batch: int = 1) -> dict:
    """A random batch with the shapes of the config's examples (no data or encoders needed)."""
    import numpy as np

    from shotstream_jax import context, schedule

    s, rng = cfg.shotstream, np.random.default_rng(0)
    h, w = cfg.video.height // 8, cfg.video.width // 8
    shots = cfg.train.num_shots if cfg.stage == "dmd_inter" else 3
    picks = context.sample_context([cfg.video.shot_frames] * (shots - 1), s.context_frames)

    def normal(*shape):
        return rng.standard_normal((batch, *shape)).astype(np.float32)

    out = dict(context=normal(len(picks), h, w, 16), target=normal(s.shot_latent_frames, h, w, 16),
               context_shot=np.tile(np.asarray([k for k, _ in picks], np.int32), (batch, 1)),
               target_shot=np.full((batch,), shots - 1, np.int32), num_shots=np.full((batch,), shots, np.int32),
               text=normal(cfg.data.max_shots, cfg.model.text_len, cfg.model.text_dim))
    if cfg.stage == "ode_init":
        out["ode"] = normal(len(schedule.student_timesteps(s.denoising_steps)), s.shot_latent_frames, h, w, 16)
    return out


def _measure(stage_name: str, size: str, steps: int) -> dict:
    import jax
    import numpy as np

    from shotstream_jax import sharding
    from shotstream_jax.config import get_config
    from shotstream_jax.train import stages

    cfg = get_config(size, stage_name)
    cfg.train.critic_steps = 1          # alternate generator / critic so both are timed
    if size != "toy":
        cfg.model.remat = True
        # Timing needs no real negative prompt: skip loading umT5 for the CFG branch.
        stages.negative_embedding = lambda c: jax.numpy.zeros((c.model.text_len, c.model.text_dim))
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    batch = synthetic_batch(cfg)
    stage = stages.STAGES[stage_name](cfg, mesh)
    state, sh = stage.init_state()
    consts = stage.init_consts()
    t0 = time.perf_counter()
    step = stage.compile(sh, consts, batch)
    gb = sharding.shard_batch(mesh, batch)
    state, m = step(state, consts, gb)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = {"generator_step_s": [], "critic_step_s": []}   # non-DMD stages: every step is a generator step
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, consts, gb)
        jax.block_until_ready(m)
        kind = "critic_step_s" if int(m.get("is_generator_step", 1)) == 0 else "generator_step_s"
        times[kind].append(time.perf_counter() - t0)
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    out = {"stage": stage_name, "size": size, "device": str(jax.devices()[0].device_kind),
           "compile_s": compile_s, "trained_params": int(sum(np.size(x) for x in jax.tree.leaves(state["gen"]))),
           "peak_mem_gib": (peak if peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 30,
           "peak_mem_kind": "device" if peak else "host RSS"}
    out.update({k: statistics.median(v) for k, v in times.items() if v})
    return out


def main(argv):
    del argv
    if FLAGS.one:
        print("RESULT" + json.dumps(_measure(FLAGS.one, FLAGS.size, FLAGS.steps)))
        return
    for stage in FLAGS.stages.split(","):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([sys.path[0], os.environ.get("PYTHONPATH", "")]))
        r = subprocess.run([sys.executable, __file__, f"--one={stage}", f"--size={FLAGS.size}",
                            f"--steps={FLAGS.steps}"], capture_output=True, text=True, env=env)
        if r.returncode or "RESULT" not in r.stdout:
            print(f"{stage}: failed\n{r.stderr[-2000:]}")
            continue
        res = json.loads(r.stdout.split("RESULT", 1)[1])
        for k, v in res.items():
            if k != "stage":
                print(f"{stage} {k}: {v:.4g}" if isinstance(v, float) else f"{stage} {k}: {v}")


if __name__ == "__main__":
    app.run(main)
