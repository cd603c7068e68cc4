"""Shapes world, stage 'vae': a small Wan-architecture VAE (8x spatial, 4x temporal, 16 channels) from scratch.

Clips of 9 frames (a lone frame, then two groups of 4): with 5-frame clips the
decoder only ever saw its causal cache after the first frame, and on whole
33-frame shots it drifted from the third group on (a held-out shot through a
2400-step 5-frame VAE: 16.4 dB PSNR, colours lost after frame 8). With 600
steps of 5-frame clips, held-out ground truth through the VAE scored
background 0.67, character colour 0.44, shape 0.17 (eval/shapes.py).
"""
from shotstream_jax.config import get_config as _get


def get_config():
    c = _get("shapes", "vae")
    c.train.clip_frames = 9
    c.train.lr_decay = "cosine"  # a short run from scratch: anneal to lr/10 by the last step
    c.train.steps = 1800
    c.train.batch_size = 2
    c.train.checkpoint_every = 100
    return c
