"""Shapes world, stage 'vae' with 4x spatial compression on lone frames (train.init_dir: a vae4x* export).

The 9-frame and whole-shot cycles left the 4x VAE blurred: a wide shot's 16-pixel
square came back with rounded corners (fill 0.80-0.87 of its box, a circle's
region) and its triangle without an apex, even in a shot's first frame, which
the causal VAE encodes alone. A lone frame costs a ninth of a 9-frame clip, so
batches of 16 frames give the spatial convolutions many more examples per
second; the foreground weight puts the error on the character's edges rather
than on the flat background. Only the first frame's path trains here: a
whole-shot cycle (vae4x_shots.py) follows to bring the later frames back.
"""
import pathlib
import runpy


def get_config():
    c = runpy.run_path(str(pathlib.Path(__file__).with_name("vae4x.py")))["get_config"]()
    c.train.clip_frames = 1
    c.train.batch_size = 16
    c.train.steps = 2400
    c.train.checkpoint_every = 300
    c.train.foreground_weight = 1.0
    return c
