"""Loading Wan2.1 VAE checkpoints into `WanVAE`.

Two layouts, told apart by their keys:
  * original Wan (`Wan2.1_VAE.pth`): `encoder.conv1`, `encoder.downsamples.N.residual.K`,
    `encoder.middle.K`, `encoder.head.K`, `conv1`, `conv2`, `decoder.upsamples.N...`;
  * diffusers `AutoencoderKLWan` (a directory with config.json +
    diffusion_pytorch_model.safetensors, or the weight file alone):
    `encoder.conv_in`, `encoder.down_blocks.N`, `mid_block.resnets.K`,
    `decoder.up_blocks.I.resnets.J`, `quant_conv`, ...

Every torch key name lives in the two tables below. Torch conv weights
[out, in, (t,) h, w] become channels-last kernels [(t,) h, w, in, out].
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional

import numpy as np
from flax import nnx

from shotstream_jax.convert.io import CheckpointError, fill_module, read_json_config, read_state_dict
from shotstream_jax.models.wan_vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WanVAE, WanVAEConfig

# (torch pattern, our replacement), applied in order to every key; the
# trailing `.weight` then becomes `.kernel`.
ORIGINAL_KEYS = [
    (r"^conv1\.", "quant_conv."),
    (r"^conv2\.", "post_quant_conv."),
    (r"^(encoder|decoder)\.conv1\.", r"\1.conv_in."),
    (r"^encoder\.downsamples\.(\d+)\.", r"encoder.blocks.\1."),
    (r"^decoder\.upsamples\.(\d+)\.", r"decoder.blocks.\1."),
    (r"\.residual\.0\.", ".norm1."),  # residual = [RMS_norm, SiLU, conv, RMS_norm, SiLU, Dropout, conv]
    (r"\.residual\.2\.", ".conv1."),
    (r"\.residual\.3\.", ".norm2."),
    (r"\.residual\.6\.", ".conv2."),
    (r"\.resample\.1\.", ".conv."),  # resample = [ZeroPad2d or Upsample, Conv2d]
    (r"\.middle\.0\.", ".mid.res0."),
    (r"\.middle\.1\.", ".mid.attn."),
    (r"\.middle\.2\.", ".mid.res1."),
    (r"\.head\.0\.", ".norm_out."),  # head = [RMS_norm, SiLU, conv]
    (r"\.head\.2\.", ".conv_out."),
]

DIFFUSERS_KEYS = [
    (r"^encoder\.down_blocks\.(\d+)\.", r"encoder.blocks.\1."),
    # decoder.up_blocks.I.{resnets.J, upsamplers.0}: flattened by _flatten_up_blocks
    (r"\.conv_shortcut\.", ".shortcut."),
    (r"\.resample\.1\.", ".conv."),
    (r"\.mid_block\.resnets\.0\.", ".mid.res0."),
    (r"\.mid_block\.attentions\.0\.", ".mid.attn."),
    (r"\.mid_block\.resnets\.1\.", ".mid.res1."),
]

_UP_BLOCK = re.compile(r"^decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.")


def _flatten_up_blocks(key: str, num_res_blocks: int) -> str:
    """diffusers groups the decoder by level (num_res_blocks+1 residual blocks,
    then an upsampler); the original (and we) keep one flat list."""
    m = _UP_BLOCK.match(key)
    if not m:
        return key
    per_level = num_res_blocks + 2
    j = int(m.group(3)) if m.group(3) is not None else num_res_blocks + 1
    return f"decoder.blocks.{int(m.group(1)) * per_level + j}." + key[m.end():]


def _rename(key: str, table) -> str:
    for pat, rep in table:
        key = re.sub(pat, rep, key)
    return re.sub(r"\.weight$", ".kernel", key)


def _to_ours(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if name.endswith(".gamma"):
        return a.reshape(-1)  # (C, 1, 1[, 1]) broadcast shapes
    if not name.endswith(".kernel") or a.ndim < 4:
        return a  # a foreign tensor: fill_module reports it
    if ".attn.to_qkv." in name or ".attn.proj." in name:
        return a.reshape(a.shape[:2]).T  # 1x1 Conv2d -> Linear [in, out]
    return np.transpose(a, (*range(2, a.ndim), 1, 0))  # [out, in, *k] -> [*k, in, out]


def _detect(sd: dict, src: str) -> str:
    if "encoder.conv1.weight" in sd:
        return "original"
    if "encoder.conv_in.weight" in sd:
        return "diffusers"
    raise CheckpointError(
        src, "not a Wan VAE checkpoint (found neither 'encoder.conv1.weight' (original Wan) nor "
             "'encoder.conv_in.weight' (diffusers AutoencoderKLWan)); pass Wan2.1_VAE.pth or the vae/ directory")


def _infer_config(ours: dict, src: str, dtype: str) -> WanVAEConfig:
    """Architecture sizes read off the weights (original .pth files carry no config)."""
    try:
        base = ours["encoder.conv_in.kernel"].shape[-1]
        z_dim = ours["post_quant_conv.kernel"].shape[-1]
        n_blocks = 1 + max(int(k.split(".")[2]) for k in ours if k.startswith("encoder.blocks."))
    except (KeyError, ValueError) as e:
        raise CheckpointError(src, f"cannot read the VAE sizes off the weights (missing {e})") from e
    levels, current, temporal = [], [], []
    for n in range(n_blocks):
        if f"encoder.blocks.{n}.conv.kernel" in ours:  # a Resample ends a level
            temporal.append(f"encoder.blocks.{n}.time_conv.kernel" in ours)
            levels.append(current)
            current = []
        elif f"encoder.blocks.{n}.conv2.kernel" in ours:
            current.append(ours[f"encoder.blocks.{n}.conv2.kernel"].shape[-1])
    levels.append(current)
    if not all(levels) or len({len(lv) for lv in levels}) != 1:
        raise CheckpointError(src, "encoder blocks do not form levels of equal depth; not a Wan2.1 VAE layout")
    stats = (WAN21_LATENTS_MEAN, WAN21_LATENTS_STD) if z_dim == 16 else ((0.0,) * z_dim, (1.0,) * z_dim)
    return WanVAEConfig(base_dim=base, z_dim=z_dim, dim_mult=tuple(lv[-1] // base for lv in levels),
                        num_res_blocks=len(levels[0]), temporal_downsample=tuple(temporal),
                        latents_mean=stats[0], latents_std=stats[1], dtype=dtype)


def _config_from_diffusers(cfg: dict, inferred: WanVAEConfig) -> WanVAEConfig:
    """Latent statistics from config.json (sizes are checked against the weights
    by fill_module). diffusers writes its 16 Wan2.1 defaults even for other
    z_dim; those are ignored."""
    mean, std = cfg.get("latents_mean"), cfg.get("latents_std")
    if mean is None or std is None or len(mean) != inferred.z_dim or len(std) != inferred.z_dim:
        return inferred
    return dataclasses.replace(inferred, latents_mean=tuple(mean), latents_std=tuple(std))


def load_wan_vae(path: str, config: Optional[WanVAEConfig] = None, dtype: str = "float32") -> WanVAE:
    """A `WanVAE` from an original Wan2.1 VAE .pth or a diffusers AutoencoderKLWan checkpoint.

    The layout is detected from the keys; the sizes are read off the weights
    unless `config` is given. Unknown, missing or mis-shaped tensors are all
    reported in one `CheckpointError` naming the file.
    """
    sd, src = read_state_dict(path, prefer=("diffusion_pytorch_model.safetensors", "Wan2.1_VAE.pth"))
    layout = _detect(sd, src)
    if layout == "original":
        names = {k: _rename(k, ORIGINAL_KEYS) for k in sd}
    else:
        up_resnets = [int(m.group(3)) for k in sd if (m := _UP_BLOCK.match(k)) and m.group(3) is not None]
        num_res = max(up_resnets, default=0)  # resnets.0..R per level
        names = {k: _rename(_flatten_up_blocks(k, num_res), DIFFUSERS_KEYS) for k in sd}
    ours = {names[k]: _to_ours(names[k], v) for k, v in sd.items()}
    if config is None:
        config = _infer_config(ours, src, dtype)
        json_cfg = read_json_config(path) if layout == "diffusers" else None
        if json_cfg is not None:
            config = _config_from_diffusers(json_cfg, config)
    return fill_module(lambda: WanVAE(config, rngs=nnx.Rngs(0)), ours, src)
