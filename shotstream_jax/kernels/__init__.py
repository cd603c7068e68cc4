"""Attention kernels behind one dispatch point (`attention`)."""
from shotstream_jax.kernels.attention import IMPLS, MaskSpec, attention

__all__ = ["IMPLS", "MaskSpec", "attention"]
