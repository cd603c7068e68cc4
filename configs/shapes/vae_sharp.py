"""Shapes world, stage 'vae' with train.decoder_only: vae_shots.py's whole-shot cycle, the decoder alone.

train.init_dir is a full model directory (the default model, or a run's text stage export); its
encoder, latents, DiT and text encoder are kept, so a trained student decodes through the new decoder
without retraining. The foreground weight puts the error where shape lives: the character's edges.
Not in the recipe: from the shipped model, 450 steps raised ground truth's colour and framing through
the VAE but not its shape, and left the student's scores as they were (benchmarks/RESULTS.md,
"Sharpening the shipped decoder alone").
"""
import pathlib
import runpy


def get_config():
    c = runpy.run_path(str(pathlib.Path(__file__).with_name("vae_shots.py")))["get_config"]()
    c.train.decoder_only = True
    c.train.foreground_weight = 2.0
    c.train.steps = 450
    return c
