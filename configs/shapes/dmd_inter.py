"""Shapes world, stage 'dmd_inter': inter-shot DMD from self-generated history, LoRA on every block Linear.

Two shots per rollout (the second conditioned on the student's own first
shot); LoRA rank 16 (the recipe's 256 exceeds this model's width of 128). Learning
rates as dmd_intra.py's.
"""
from shotstream_jax.config import get_config as _get


def get_config():
    c = _get("shapes", "dmd_inter")
    c.train.lr, c.train.lr_critic = 5e-6, 1e-6
    c.train.lora_rank, c.train.lora_alpha = 16, 16.0
    c.train.num_shots = 2
    c.train.steps = 300
    c.train.batch_size = 2
    c.train.checkpoint_every = 60
    return c
