"""Shapes world, stage 'ode_pairs': teacher trajectories (50 steps, CFG 6) as in the recipe, on the Shapes timestep shift (config.py)."""
from shotstream_jax.config import get_config as _get


def get_config():
    return _get("shapes", "ode_pairs")
