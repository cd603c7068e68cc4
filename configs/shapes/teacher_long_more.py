"""Shapes world, stage 'teacher' on an accelerator, second cycle (train.init_dir: teacher_long's export/).

15000 more steps of batch 32 from lr 3e-4 (the CPU cycles' teacher_more.py
rate), cosine to lr/10. On one H200 the first cycle (teacher_long.py, 12500
steps) ended at flow loss 0.295 over its last 1250 steps, and this one at 0.239
(the CPU recipe's four cycles: 0.264). Everything else is teacher_long.py's.
"""
import pathlib
import runpy


def get_config():
    c = runpy.run_path(str(pathlib.Path(__file__).with_name("teacher_long.py")))["get_config"]()
    c.train.lr = 3e-4
    c.train.steps = 15000
    return c
