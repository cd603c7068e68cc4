"""The default model: the Shapes-world model shipped in the package, else a toy with fixed random weights.

`load()` (what `ShotStream.load()` and `shotstream-generate` use without a
model directory) returns the model directory `SHIPPED` inside the package when
it is there: the student trained end to end on the Shapes world by
`launch/shapes.sh` (64x64, 16 fps, 33-frame shots; see the README). Until a
completed run is copied there, `load()` builds the toy model below: it runs the
whole streaming pipeline (and the tests), but its frames are noise.

    cp -r RUN/model shotstream_jax/assets/default_model     # ship a finished launch/shapes.sh run
"""
from __future__ import annotations

import os

import jax
from flax import nnx

from shotstream_jax.config import get_config
from shotstream_jax.models.umt5 import UMT5Config, UMT5Encoder
from shotstream_jax.models.wan_dit import WanDiT, WanDiTConfig
from shotstream_jax.models.wan_vae import WanVAE, WanVAEConfig
from shotstream_jax.text import ByteTokenizer, TextEncoder

SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "default_model")
VAE = WanVAEConfig(base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1)
SEED = 20260101


def load(**dit_overrides):
    """(config, dit, vae, text_encoder) of the default model: `SHIPPED` when present, else `build()`."""
    if os.path.isfile(os.path.join(SHIPPED, "config.json")):
        from shotstream_jax import model_dir
        return model_dir.load_pipeline(SHIPPED, **dit_overrides)
    return build(**dit_overrides)


def build(**dit_overrides):
    """(config, dit, vae, text_encoder) of the toy model, identical on every call."""
    config = get_config("toy", "generate")
    dit_cfg = WanDiTConfig.from_dict({**config.model.to_dict(), **dit_overrides})
    t5_cfg = UMT5Config.from_size("tiny", vocab_size=ByteTokenizer.vocab_size, d_model=dit_cfg.text_dim,
                                  d_kv=dit_cfg.text_dim // 4)
    # unsafe_rbg: random init compiles ~4x faster than threefry on CPU (one compile per weight shape).
    keys = jax.random.split(jax.random.key(SEED, impl="unsafe_rbg"), 3)
    dit = WanDiT(dit_cfg, rngs=nnx.Rngs(keys[0]))
    vae = WanVAE(VAE, rngs=nnx.Rngs(keys[1]))
    t5 = UMT5Encoder(t5_cfg, rngs=nnx.Rngs(keys[2]))
    return config, dit, vae, TextEncoder(t5, ByteTokenizer(), text_len=dit_cfg.text_len)
