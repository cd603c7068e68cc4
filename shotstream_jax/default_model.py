"""The default model: the toy configuration with fixed random weights.

Trained ShotStream weights cannot be fetched where this package is built, so
`ShotStream.load()` without a directory builds this tiny model from fixed
seeds: it runs the whole streaming pipeline end to end (and in tests), but its
frames are noise. Real videos need converted weights (`shotstream-convert`).
"""
from __future__ import annotations

import jax
from flax import nnx

from shotstream_jax.config import get_config
from shotstream_jax.models.umt5 import UMT5Config, UMT5Encoder
from shotstream_jax.models.wan_dit import WanDiT, WanDiTConfig
from shotstream_jax.models.wan_vae import WanVAE, WanVAEConfig
from shotstream_jax.text import ByteTokenizer, TextEncoder

VAE = WanVAEConfig(base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1)
SEED = 20260101


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
