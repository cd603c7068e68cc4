"""wan_1_3b model, stage 'dmd_intra'."""
from shotstream_jax.config import get_config as _get


def get_config():
    return _get("wan_1_3b", "dmd_intra")
