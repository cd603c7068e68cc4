"""Shapes world, stage 'dmd_intra': intra-shot DMD (ground-truth history), 5 critic steps per generator step.

Learning rates are the recipe's (2e-6 generator, 4e-7 critic) scaled up 2.5x
for a small model and a short run. 10x (the seventh run's) lost the ODE-init
student's colour in the ninth run (named 0.67 -> 0.51; 2.5x: 0.60, and better
motion and framing: benchmarks/RESULTS.md, "The ninth run").
"""
from shotstream_jax.config import get_config as _get


def get_config():
    c = _get("shapes", "dmd_intra")
    c.train.lr, c.train.lr_critic = 5e-6, 1e-6
    c.train.steps = 300
    c.train.batch_size = 2
    c.train.checkpoint_every = 60
    return c
