"""Shapes world, stage 'generate': 64x64 at 16 fps, 33-frame shots (three 3-latent-frame chunks)."""
from shotstream_jax.config import get_config as _get


def get_config():
    return _get("shapes", "generate")
