"""Model directories: `config.json` plus one orbax checkpoint per component.

    DIR/config.json   {"format": "shotstream_jax/1", "dit": {WanDiTConfig fields}, ...}
    DIR/dit/          orbax checkpoint of the WanDiT state
"""
from __future__ import annotations

import dataclasses
import os

from flax import nnx

from shotstream_jax import checkpoint
from shotstream_jax.models.wan_dit import WanDiT, WanDiTConfig

FORMAT = "shotstream_jax/1"


def save_dit(out_dir: str, dit: WanDiT, overwrite: bool = False) -> None:
    """Write a model directory holding a DiT, atomically."""
    with checkpoint.atomic_directory(out_dir, overwrite=overwrite) as tmp:
        cfg = dataclasses.asdict(dit.cfg)
        checkpoint.write_json(os.path.join(tmp, "config.json"), {"format": FORMAT, "dit": cfg})
        checkpoint.save_state(os.path.join(tmp, "dit"), dit)


def load_dit(model_dir: str, **overrides) -> WanDiT:
    """The DiT of a model directory; `overrides` change runtime fields (dtype, attention_impl...)."""
    meta = checkpoint.read_json(os.path.join(model_dir, "config.json"))
    if meta.get("format") != FORMAT or "dit" not in meta:
        raise ValueError(f"{model_dir}/config.json: not a shotstream_jax model directory "
                         f"(format {meta.get('format')!r}); convert PyTorch weights with shotstream-convert")
    cfg = WanDiTConfig.from_dict({**meta["dit"], **overrides})
    dit = checkpoint.load_state(os.path.join(model_dir, "dit"), lambda: WanDiT(cfg, rngs=nnx.Rngs(0)))
    return dit
