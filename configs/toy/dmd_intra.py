"""toy model, stage 'dmd_intra'."""
from shotstream_jax.config import get_config as _get


def get_config():
    return _get("toy", "dmd_intra")
