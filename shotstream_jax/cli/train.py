"""shotstream-train: run one stage of the ShotStream training recipe.

    shotstream-train --config=configs/<size>/<stage>.py --workdir=DIR [--config.a.b=value ...]

Stages (DESIGN.md sections 5 and 8), in order:
  teacher    next-shot teacher fine-tuning (flow matching, self-attention only)
  ode_pairs  teacher sampling with CFG 6 -> ODE trajectories under DIR/ode_pairs
  ode_init   student regression onto the ODE pairs (--config.train.ode_dir)
  dmd_intra  intra-shot DMD (ground-truth history)
  dmd_inter  inter-shot DMD (self-generated history, LoRA)
Where nothing is pretrained (configs/shapes), two stages come first:
  vae        a Wan VAE by reconstruction; its export is a full model directory
  text       the umT5 of a model directory (--config.train.init_dir) learns the prompts' word order
Each stage reads the previous one's network with --config.train.init_dir=PREV/export
(and the teacher with --config.train.teacher_dir=TEACHER/export).

With no --config.data.manifest / --config.data.latents_dir a small toy dataset
is generated in DIR. Running again with the same DIR resumes at the last
checkpoint (same step, data position and RNG). One JSON line per step goes to
DIR/metrics.jsonl, TensorBoard events to DIR/tensorboard. The global batch is
--config.train.batch_size (--config.train.grad_accum micro-batches per step);
--config.mesh.data/fsdp/context/tensor shape the device mesh (their product
must equal the device count; --config.mesh.dcn_data slices for multislice).

Multi-host (TPU pod slices, SLURM, or JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID): run the same command on every host;
jax.distributed starts by itself (launch/tpu_pod.sh, launch/slurm_gpu.sh).
WORKDIR may be a gs:// bucket. SIGTERM checkpoints at the current step and stops.
"""
from __future__ import annotations

import logging

from absl import app, flags

from shotstream_jax.cli import common
from shotstream_jax.cli.common import config, define_config_flag, fail

flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, tensorboard/, export/.")
flags.DEFINE_bool("progress", True, "Show a tqdm progress bar.")
flags.DEFINE_bool("dry_run", False, "Print the per-chip memory of the config's step on its mesh (parameters, "
                  "optimiser, gradients, saved activations; from abstract evaluation) and exit.")
flags.DEFINE_integer("dry_run_chips", None, "With --dry_run: plan for this many chips instead of the local devices "
                     "(the mesh section must multiply to it), e.g. 64 for a v5p-128 slice.")
flags.DEFINE_bool("export_only", False, "Write WORKDIR's checkpoint (latest, or --export_step) as a model "
                  "directory at --export_dir and exit; runs on every host of a pod like training.")
flags.DEFINE_integer("export_step", None, "With --export_only: the checkpoint step (default the latest).")
flags.DEFINE_string("export_dir", None, "With --export_only: the model directory (default WORKDIR/export).")
flags.DEFINE_string("profile_steps", None, "FIRST,LAST: a jax.profiler trace of those steps in WORKDIR/profile.")
common.define_compilation_cache_flag("WORKDIR/compilation_cache")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        return fail("shotstream-train", f"unexpected arguments {argv[1:]}; see --help")
    if not FLAGS.workdir:
        return fail("shotstream-train", "--workdir is required (where checkpoints and metrics go)")
    logging.getLogger().setLevel(logging.INFO)
    from shotstream_jax.train import loop, memory
    cfg = config()
    try:
        if FLAGS.dry_run:
            print(memory.report(cfg, chips=FLAGS.dry_run_chips))
            return 0
        common.use_compilation_cache(f"{FLAGS.workdir.rstrip('/')}/compilation_cache")
        if FLAGS.export_only:
            out = FLAGS.export_dir or f"{FLAGS.workdir.rstrip('/')}/export"
            step = loop.export_checkpoint(cfg, FLAGS.workdir, out, FLAGS.export_step)
            print(f"exported step {step} to {out}")
            return 0
        profile = None
        if FLAGS.profile_steps:
            try:
                profile = tuple(int(x) for x in FLAGS.profile_steps.split(","))
                assert len(profile) == 2 and profile[0] <= profile[1]
            except (ValueError, AssertionError):
                return fail("shotstream-train", f"--profile_steps={FLAGS.profile_steps}: expected FIRST,LAST (e.g. 10,12)")
        m = loop.train(cfg, FLAGS.workdir, progress=FLAGS.progress, profile_steps=profile)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        return fail("shotstream-train", str(e))
    print(f"done: step {m.get('step')} loss {m.get('loss')}")
    return 0


def run():
    define_config_flag()
    common.run(main, __name__)


if __name__ == "__main__":
    run()
