"""wan_1_3b model, stage 'teacher'."""
from shotstream_jax.config import get_config as _get


def get_config():
    return _get("wan_1_3b", "teacher")
