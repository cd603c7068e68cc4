"""Shapes world, stage 'text': the VAE stage's random umT5 learns the word order of the world's prompts
(train.init_dir: vae_shots' export/; the export is that model directory with the trained encoder).

The recipe freezes a pretrained umT5. With none pretrained, the random frozen encoder of the first
two runs gave the two colour words of `a red circle ... on a blue background` nearly the same
outputs: on first shots the teacher painted the character's colour as the background as often as
the background's (20 and 20 of 50 held-out first shots), and characters were at chance.
"""
from shotstream_jax.config import get_config as _get


def get_config():
    c = _get("shapes", "text")
    c.train.steps = 2000
    c.train.batch_size = 32
    c.train.checkpoint_every = 500
    return c
