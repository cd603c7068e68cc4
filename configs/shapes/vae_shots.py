"""Shapes world, stage 'vae' continued on whole 33-frame shots (train.init_dir: the 9-frame vae's export/).

A causal VAE only learns the cache states it meets within its training clips: the
9-frame VAE reconstructs the first 9 frames of a held-out shot at 23-26 dB and
drifts from frame 9 on (10 dB by frame 14), because its convolutions' temporal
receptive field is longer than the clip. Generation decodes whole shots (the
decoder cache starts afresh each shot), so the VAE finishes on whole shots,
one per batch (3.7x the pixels of a 9-frame clip).
"""
from shotstream_jax.config import get_config as _get


def get_config():
    c = _get("shapes", "vae")
    c.train.clip_frames = 33
    c.train.lr = 3e-4
    c.train.lr_decay = "cosine"
    c.train.steps = 300
    c.train.batch_size = 1
    c.train.checkpoint_every = 50
    return c
