"""Shapes world, stage 'teacher' on an accelerator: a long cosine cycle at batch 32, from scratch.

The CPU recipe (teacher.py, then teacher_more.py three times: 30000 steps of
batch 8 in four cosine cycles, about 2.5 h on 2 cores) was still improving at
its last cycle. On a GPU a step of batch 32 costs about what a step of batch 8
does (one H200: about 16 ms, set by the host's input pipeline), so this config
trains with four times the examples per step and the later cycles' foreground
weight 2: 12500 steps, 3.5 min on the H200. teacher_long_more.py goes on from
its export. `launch/shapes.sh` runs both when TEACHER=long.
"""
import pathlib
import runpy


def get_config():
    c = runpy.run_path(str(pathlib.Path(__file__).with_name("teacher.py")))["get_config"]()
    c.train.batch_size = 32
    c.train.steps = 12500
    c.train.warmup_steps = 500
    c.train.foreground_weight = 2.0
    c.train.checkpoint_every = 2000
    return c
