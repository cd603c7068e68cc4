"""Shapes world, stage 'teacher' continued (train.init_dir: the first teacher's export/): a second cosine cycle.

The first cycle (teacher.py, 6000 steps, foreground weight 1) only begins to take
the character's colour from the prompt: on held-out stories 0-11 its samples
name the character's colour right in 0.11 of the shots that name it (chance 0.2).
A second cycle of 8000 steps from lr 3e-4, with the foreground weight raised to
2, brings that to 0.53 and motion from 0.18 to 0.39. Continuing from the first
export restarts the optimizer; the cosine anneals to lr/10 again.
"""
from shotstream_jax.config import get_config as _get


def get_config():
    c = _get("shapes", "teacher")
    c.train.trainable = "all"
    c.train.lr, c.train.b1, c.train.warmup_steps = 3e-4, 0.9, 100
    c.train.lr_decay = "cosine"
    c.train.steps = 8000
    c.train.foreground_weight = 2.0
    c.train.context_dropout = 0.3
    c.train.batch_size = 8
    c.train.checkpoint_every = 500
    return c
