"""Shapes world, stage 'dmd_inter': inter-shot DMD from self-generated history, LoRA on every block Linear.

Two shots per rollout (the second conditioned on the student's own first
shot); LoRA rank 16 (the recipe's 256 exceeds this model's width of 128).
Learning rates, steps, batch and checkpoints are dmd_intra.py's.
"""
import pathlib
import runpy

from shotstream_jax.config import get_config as _get


def get_config():
    c = _get("shapes", "dmd_inter")
    intra = runpy.run_path(str(pathlib.Path(__file__).with_name("dmd_intra.py")))["get_config"]().train
    for k in ("lr", "lr_critic", "steps", "batch_size", "checkpoint_every"):
        c.train[k] = intra[k]
    c.train.lora_rank, c.train.lora_alpha = 16, 16.0
    c.train.num_shots = 2
    return c
