"""Loading PyTorch checkpoints (original Wan and diffusers/transformers layouts).

Public interface:
  load_wan_dit(path) -> WanDiT
  load_wan_vae(path) -> WanVAE
  load_umt5(path)    -> UMT5Encoder
"""
from shotstream_jax.convert.io import CheckpointError


def __getattr__(name):
    if name == "load_wan_dit":
        from shotstream_jax.convert.dit import load_wan_dit
        return load_wan_dit
    if name == "load_wan_vae":
        from shotstream_jax.convert.vae import load_wan_vae
        return load_wan_vae
    if name == "load_umt5":
        from shotstream_jax.convert.umt5 import load_umt5
        return load_umt5
    raise AttributeError(f"module 'shotstream_jax.convert' has no attribute {name!r}")


__all__ = ["CheckpointError", "load_wan_dit", "load_wan_vae", "load_umt5"]
