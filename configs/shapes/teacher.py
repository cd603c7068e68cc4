"""Shapes world, stage 'teacher': the next-shot teacher, trained from scratch.

Departures from the recipe (which fine-tunes the self-attention of a pretrained
Wan T2V model at lr 1e-5): there is no pretrained base here, so every parameter
trains, at a learning rate for training from scratch, with Adam momentum.

The flow loss weights each latent pixel by how far it stands from its frame's
background (train.foreground_weight, models/teacher.foreground_weights). With a
plain MSE the character, a few latent pixels of each frame, is a small share of
the loss, and 6000 steps taught the teacher the backgrounds but not to take the
character's colour from the prompt: at sigma 0.9 its prediction was the same
for every colour word (with 2 heads, 9600 steps; with 4 heads, 3000 steps).
With weight 1 it differs by colour word by step 3000; teacher_more.py goes on
for three more cycles (the sixth run's teacher; the shipped model's is teacher_long.py's).
"""
from shotstream_jax.config import get_config as _get


def get_config():
    c = _get("shapes", "teacher")
    c.train.trainable = "all"
    c.train.lr, c.train.b1, c.train.warmup_steps = 5e-4, 0.9, 100
    c.train.lr_decay = "cosine"  # a short run from scratch: anneal to lr/10 by the last step
    c.train.steps = 6000
    c.train.foreground_weight = 1.0
    c.train.context_dropout = 0.3   # first shots (zero context) are 1 in 3.5 of the world's shots
    c.train.batch_size = 8
    c.train.checkpoint_every = 250
    return c
