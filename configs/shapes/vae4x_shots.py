"""Shapes world, stage 'vae' with 4x spatial compression, continued on whole shots (train.init_dir:
vae4x.py's export/): vae_shots.py's recipe with vae4x.py's architecture."""
import pathlib
import runpy


def get_config():
    c = runpy.run_path(str(pathlib.Path(__file__).with_name("vae_shots.py")))["get_config"]()
    c.vae.dim_mult = (1, 2, 2)
    c.vae.temporal_downsample = (True, True)
    return c
