"""Shapes world, stage 'ode_pairs': teacher trajectories (50 steps, CFG 6) as in the recipe, on the Shapes timestep shift (config.py).

Pairs for the first 1026 examples only (train.ode_examples): all of the 400-story
world's, and the first 400 stories' of a larger one. A trajectory takes about 52 ms
on one H200 and 0.5 s on 2 CPU cores, one at a time, and ODE init (configs/shapes/
ode_init.py) is sized for this many.
"""
from shotstream_jax.config import get_config as _get


def get_config():
    c = _get("shapes", "ode_pairs")
    c.train.ode_examples = 1026
    return c
