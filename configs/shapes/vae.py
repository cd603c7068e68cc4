"""Shapes world, stage 'vae': a small Wan-architecture VAE (8x spatial, 4x temporal, 16 channels) from scratch.

600 steps were not enough: held-out ground truth passed through that VAE scored
background 0.67, character colour 0.44, shape 0.17 (eval/shapes.py), so the
chain would have been capped by the decoder.
"""
from shotstream_jax.config import get_config as _get


def get_config():
    c = _get("shapes", "vae")
    c.train.steps = 2400
    c.train.batch_size = 2
    c.train.checkpoint_every = 100
    return c
