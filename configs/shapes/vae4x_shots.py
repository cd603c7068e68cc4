"""Shapes world, stage 'vae' with 4x spatial compression, continued on whole shots (train.init_dir:
vae4x.py's export/): vae_shots.py's recipe with vae4x.py's architecture."""
import pathlib
import runpy


def get_config():
    here = pathlib.Path(__file__)
    c = runpy.run_path(str(here.with_name("vae_shots.py")))["get_config"]()
    c.vae = runpy.run_path(str(here.with_name("vae4x.py")))["get_config"]().vae
    return c
