"""Step time and peak memory of every training stage.

    python benchmarks/train_step.py [--size=toy] [--steps=5] [--stages=teacher,ode_init,dmd_intra,dmd_inter]

Each stage runs in its own subprocess (so peak memory is its own) on one
device with batch 1: compile time, median step time of `--steps` steps after
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
import tempfile
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # a checkout needs no install

flags.DEFINE_string("size", "toy", "Config size (toy | wan_1_3b | wan_14b).")
flags.DEFINE_integer("steps", 5, "Timed steps per stage (after the compiling one).")
flags.DEFINE_string("stages", "teacher,ode_init,dmd_intra,dmd_inter", "Stages to measure.")
flags.DEFINE_string("one", "", "Internal: measure this stage in this process and print JSON.")
FLAGS = flags.FLAGS


def _measure(stage_name: str, size: str, steps: int) -> dict:
    import jax
    import numpy as np

    from shotstream_jax import sharding
    from shotstream_jax.config import get_config
    from shotstream_jax.data import pipeline
    from shotstream_jax.train import loop, stages

    cfg = get_config(size, stage_name)
    cfg.train.critic_steps = 1          # alternate generator / critic so both are timed
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    work = tempfile.mkdtemp()
    if stage_name == "ode_init":
        loop.write_ode_pairs(cfg, work, mesh, os.path.join(work, "ode_pairs"))
        src = pipeline.PreencodedSource(os.path.join(work, "ode_pairs"))
    else:
        src = pipeline.source(cfg, work, min_shots=cfg.train.num_shots if stage_name == "dmd_inter" else 2)
    batch = next(iter(pipeline.dataset(src, 1, seed=0)))
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
