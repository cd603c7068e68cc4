"""Shapes world, stage 'ode_pairs': teacher trajectories (50 steps, CFG 6, shift 8) as in the recipe."""
from shotstream_jax.config import get_config as _get


def get_config():
    return _get("shapes", "ode_pairs")
