"""Shapes world, stage 'teacher' continued (train.init_dir: the first teacher's export/): a second cosine cycle.

The first cycle (teacher.py, 6000 steps, foreground weight 1) only begins to take
the character's colour from the prompt: on held-out stories 0-11 its samples
name the character's colour right in 0.11 of the shots that name it (chance 0.2).
A second cycle of 8000 steps from lr 3e-4, with the foreground weight raised to
2, brings that to 0.53 and motion from 0.18 to 0.39. launch/shapes.sh runs this
config three times (teacher_more, teacher_third, teacher_fourth, each from the one
before's export): the third cycle took the flow loss from 0.333 to 0.292 and the
teacher's held-out colour from 0.37 to 0.46, motion from 0.30 to 0.58; the fourth
took the loss to 0.264, colour to 0.48, motion to 0.69. Continuing from an export restarts
the optimizer; the cosine anneals to lr/10 again. Everything else is teacher.py's.
"""
import pathlib
import runpy


def get_config():
    c = runpy.run_path(str(pathlib.Path(__file__).with_name("teacher.py")))["get_config"]()
    c.train.lr = 3e-4
    c.train.steps = 8000
    c.train.foreground_weight = 2.0
    c.train.checkpoint_every = 500
    return c
