"""Shapes world, stage 'vae': a small Wan-architecture VAE (8x spatial, 4x temporal, 16 channels) from scratch."""
from shotstream_jax.config import get_config as _get


def get_config():
    c = _get("shapes", "vae")
    c.train.steps = 600
    c.train.batch_size = 2
    c.train.checkpoint_every = 100
    return c
