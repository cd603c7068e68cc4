"""wan_1_3b model, stage 'ode_pairs'."""
from shotstream_jax.config import get_config as _get


def get_config():
    return _get("wan_1_3b", "ode_pairs")
