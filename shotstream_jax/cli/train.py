"""shotstream-train: run one stage of the ShotStream training recipe.

    shotstream-train --config=configs/<size>/<stage>.py --workdir=DIR [--config.a.b=value ...]

Stages (DESIGN.md sections 5 and 8), in order:
  teacher    next-shot teacher fine-tuning (flow matching, self-attention only)
  ode_pairs  teacher sampling with CFG 6 -> ODE trajectories under DIR/ode_pairs
  ode_init   student regression onto the ODE pairs (--config.train.ode_dir)
  dmd_intra  intra-shot DMD (ground-truth history)
  dmd_inter  inter-shot DMD (self-generated history, LoRA)
Each stage reads the previous one's network with --config.train.init_dir=PREV/export
(and the teacher with --config.train.teacher_dir=TEACHER/export).

With no --config.data.manifest / --config.data.latents_dir a small toy dataset
is generated in DIR. Running again with the same DIR resumes at the last
checkpoint (same step, data position and RNG). One JSON line per step goes to
DIR/metrics.jsonl, TensorBoard events to DIR/tensorboard. The global batch is
--config.train.batch_size; --config.mesh.data/fsdp/tensor shape the device mesh
(their product must equal the device count).
"""
from __future__ import annotations

import logging

from absl import app, flags

from shotstream_jax.cli.common import config, define_config_flag, fail

flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, tensorboard/, export/.")
flags.DEFINE_bool("progress", True, "Show a tqdm progress bar.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        return fail("shotstream-train", f"unexpected arguments {argv[1:]}; see --help")
    if not FLAGS.workdir:
        return fail("shotstream-train", "--workdir is required (where checkpoints and metrics go)")
    logging.getLogger().setLevel(logging.INFO)
    from shotstream_jax.train import loop
    try:
        m = loop.train(config(), FLAGS.workdir, progress=FLAGS.progress)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        return fail("shotstream-train", str(e))
    print(f"done: step {m.get('step')} loss {m.get('loss')}")
    return 0


def run():
    define_config_flag()
    app.run(main)


if __name__ == "__main__":
    run()
