"""toy model, stage 'teacher'."""
from shotstream_jax.config import get_config as _get


def get_config():
    return _get("toy", "teacher")
