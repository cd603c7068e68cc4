"""Wan2.1 DiT checkpoints (original Wan or diffusers layout) -> `WanDiT`.

This is the one place that knows the DiT's PyTorch key names. The original
Wan layout is the pivot: diffusers names are first renamed to it, then every
original name maps to one parameter of our module tree.
"""
from __future__ import annotations

import logging
import re

import numpy as np
from flax import nnx

from shotstream_jax.convert.io import CheckpointError, _list_head, fill_module, read_json_config, read_state_dict
from shotstream_jax.models.wan_dit import WanDiT, WanDiTConfig, abstract_model

# diffusers name -> original Wan name (regex, replacement). `{i}` is the block index.
DIFFUSERS_TO_WAN = [
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.self_attn.o."),
    (r"^blocks\.(\d+)\.attn1\.to_([qkv])\.", r"blocks.\1.self_attn.\2."),
    (r"^blocks\.(\d+)\.attn1\.norm_([qk])\.", r"blocks.\1.self_attn.norm_\2."),
    (r"^blocks\.(\d+)\.attn2\.to_out\.0\.", r"blocks.\1.cross_attn.o."),
    (r"^blocks\.(\d+)\.attn2\.to_([qkv])\.", r"blocks.\1.cross_attn.\2."),
    (r"^blocks\.(\d+)\.attn2\.norm_([qk])\.", r"blocks.\1.cross_attn.norm_\2."),
    (r"^blocks\.(\d+)\.norm2\.", r"blocks.\1.norm3."),
    (r"^blocks\.(\d+)\.ffn\.net\.0\.proj\.", r"blocks.\1.ffn.0."),
    (r"^blocks\.(\d+)\.ffn\.net\.2\.", r"blocks.\1.ffn.2."),
    (r"^blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation"),
]

# original Wan name -> (our parameter path, how to convert the tensor).
# 'linear': torch [out, in] -> [in, out]; 'conv3d': [D, C, pt, ph, pw] ->
# [(pt, ph, pw, C), D] matching WanDiT.patchify; 'squeeze0': drop the leading 1;
# 'copy': as is. Per-block entries are stacked over blocks.
GLOBAL_KEYS = {
    "patch_embedding.weight": ("patch_embedding.kernel", "conv3d"),
    "patch_embedding.bias": ("patch_embedding.bias", "copy"),
    "text_embedding.0.weight": ("text_embedding.fc1.kernel", "linear"),
    "text_embedding.0.bias": ("text_embedding.fc1.bias", "copy"),
    "text_embedding.2.weight": ("text_embedding.fc2.kernel", "linear"),
    "text_embedding.2.bias": ("text_embedding.fc2.bias", "copy"),
    "time_embedding.0.weight": ("time_embedding.layers.0.kernel", "linear"),
    "time_embedding.0.bias": ("time_embedding.layers.0.bias", "copy"),
    "time_embedding.2.weight": ("time_embedding.layers.2.kernel", "linear"),
    "time_embedding.2.bias": ("time_embedding.layers.2.bias", "copy"),
    "time_projection.1.weight": ("time_projection.kernel", "linear"),
    "time_projection.1.bias": ("time_projection.bias", "copy"),
    "head.head.weight": ("head.head.kernel", "linear"),
    "head.head.bias": ("head.head.bias", "copy"),
    "head.modulation": ("head.modulation", "squeeze0"),
}
BLOCK_KEYS = {
    **{f"{a}.{p}.weight": (f"{a}.{p}.kernel", "linear") for a in ("self_attn", "cross_attn") for p in "qkvo"},
    **{f"{a}.{p}.bias": (f"{a}.{p}.bias", "copy") for a in ("self_attn", "cross_attn") for p in "qkvo"},
    **{f"{a}.norm_{p}.weight": (f"{a}.norm_{p}.weight", "copy") for a in ("self_attn", "cross_attn") for p in "qk"},
    "norm3.weight": ("norm3.weight", "copy"),
    "norm3.bias": ("norm3.bias", "copy"),
    "ffn.0.weight": ("ffn.fc1.kernel", "linear"),
    "ffn.0.bias": ("ffn.fc1.bias", "copy"),
    "ffn.2.weight": ("ffn.fc2.kernel", "linear"),
    "ffn.2.bias": ("ffn.fc2.bias", "copy"),
    "modulation": ("modulation", "squeeze0"),
}
_PREFIXES = ("model.", "module.", "_fsdp_wrapped_module.", "generator.")


def _convert(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "linear":
        return x.T
    if kind == "conv3d":
        return x.transpose(2, 3, 4, 1, 0).reshape(-1, x.shape[0])
    if kind == "squeeze0":
        return x.reshape(x.shape[1:])
    return x


def strip_prefix(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop a wrapper prefix ('model.', 'module.', ...) shared by every key."""
    for p in _PREFIXES:
        if sd and all(k.startswith(p) for k in sd):
            return strip_prefix({k[len(p):]: v for k, v in sd.items()})
    return sd


def detect_layout(sd: dict[str, np.ndarray]) -> str:
    if any(k.startswith("condition_embedder.") or ".attn1." in k for k in sd):
        return "diffusers"
    if "patch_embedding.weight" in sd and any(".self_attn." in k for k in sd):
        return "wan"
    raise ValueError("neither the original Wan nor the diffusers key layout "
                     f"(first keys: {_list_head(sd, 5)})")


def to_wan_names(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename diffusers keys to the original Wan names; keys that match no rule are kept."""
    out = {}
    for k, v in sd.items():
        for pat, rep in DIFFUSERS_TO_WAN:
            new, n = re.subn(pat, rep, k)
            if n:
                k = new
                break
        out[k] = v
    return out


def infer_config(sd: dict[str, np.ndarray], json_cfg: dict | None, **overrides) -> WanDiTConfig:
    """Shapes from the weights; head count and norms from config.json when there is one."""
    dim, in_ch, pt, ph, pw = sd["patch_embedding.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    j = json_cfg or {}
    if "num_attention_heads" in j:  # diffusers config
        heads = j["num_attention_heads"]
    elif "num_heads" in j:  # original Wan config
        heads = j["num_heads"]
    elif "num_heads" in overrides:
        heads = overrides["num_heads"]
    elif dim % 128 == 0:
        heads = dim // 128  # every released Wan2.1 DiT uses head dim 128
        logging.warning("no config.json with the head count beside the checkpoint; assuming head dim 128 "
                        "(%d heads)", heads)
    else:
        raise ValueError(f"dim {dim} is not a multiple of 128 and no config.json gives the head count; "
                         "put the release's config.json beside the weights or pass num_heads=")
    cfg = dict(
        dim=int(dim), num_heads=int(heads), num_layers=layers,
        ffn_dim=int(sd["blocks.0.ffn.0.weight"].shape[0]),
        freq_dim=int(sd["time_embedding.0.weight"].shape[1]),
        in_channels=int(in_ch),
        out_channels=int(sd["head.head.weight"].shape[0]) // (pt * ph * pw),
        text_dim=int(sd["text_embedding.0.weight"].shape[1]),
        patch_size=(int(pt), int(ph), int(pw)),
        eps=float(j.get("eps", 1e-6)),
        cross_attn_norm="blocks.0.norm3.weight" in sd,
        qk_norm="blocks.0.self_attn.norm_q.weight" in sd,
    )
    if "text_len" in j:
        cfg["text_len"] = int(j["text_len"])
    cfg.update(overrides)
    return WanDiTConfig.from_dict(cfg)


def expected_keys(cfg: WanDiTConfig) -> set[str]:
    keys = set(GLOBAL_KEYS)
    for name in BLOCK_KEYS:
        if name.startswith("norm3.") and not cfg.cross_attn_norm:
            continue
        if ".norm_" in name and not cfg.qk_norm:
            continue
        keys |= {f"blocks.{i}.{name}" for i in range(cfg.num_layers)}
    return keys


def wan_state_to_params(sd: dict[str, np.ndarray], cfg: WanDiTConfig, src: str) -> dict[str, np.ndarray]:
    """Original-layout state dict -> our flat parameter dict (blocks stacked on axis 0).

    Shapes are checked per source tensor so that an error names the original key.
    """
    target = {".".join(map(str, path)): var.get_value().shape
              for path, var in nnx.to_flat_state(nnx.state(abstract_model(cfg)))}
    out, bad = {}, []

    def take(name, ours, kind, want):
        x = _convert(kind, sd[name]) if sd[name].ndim else sd[name]
        if x.shape != tuple(want):
            bad.append(f"{name}: {tuple(sd[name].shape)}")
        return x

    for name, (ours, kind) in GLOBAL_KEYS.items():
        out[ours] = take(name, ours, kind, target[ours])
    for name, (ours, kind) in BLOCK_KEYS.items():
        key = f"blocks.{ours}"
        if key in target:
            out[key] = [take(f"blocks.{i}.{name}", key, kind, target[key][1:]) for i in range(cfg.num_layers)]
    if bad:
        raise CheckpointError(src, f"{len(bad)} tensors have the wrong shape for a config inferred as "
                                   f"dim={cfg.dim}, ffn_dim={cfg.ffn_dim}, layers={cfg.num_layers}: "
                                   + _list_head(bad, 4))
    return {k: np.stack(v) if isinstance(v, list) else v for k, v in out.items()}


def load_wan_dit(path: str, **config_overrides) -> WanDiT:
    """Load a Wan2.1 DiT from a PyTorch checkpoint (layout auto-detected).

    `path`: a .safetensors / .pth file, a directory (diffusers `transformer/`
    folder or the original release folder), or a sharded `*.index.json`.
    `config_overrides` set WanDiTConfig fields the weights do not determine
    (dtype, param_dtype, remat, attention_impl, ...).
    """
    sd, src = read_state_dict(path, prefer=("diffusion_pytorch_model.safetensors.index.json",
                                            "diffusion_pytorch_model.safetensors"))
    sd = strip_prefix(sd)
    try:
        layout = detect_layout(sd)
    except ValueError as e:
        raise CheckpointError(src, f"not a Wan DiT checkpoint: {e}") from None
    if layout == "diffusers":
        sd = to_wan_names(sd)
    for needed in ("patch_embedding.weight", "blocks.0.ffn.0.weight", "time_embedding.0.weight",
                   "head.head.weight", "text_embedding.0.weight"):
        if needed not in sd:
            raise CheckpointError(src, f"{layout} layout checkpoint lacks {needed}")
    try:
        cfg = infer_config(sd, read_json_config(path), **config_overrides)
    except ValueError as e:
        raise CheckpointError(src, str(e)) from None
    want = expected_keys(cfg)
    missing, unknown = sorted(want - set(sd)), sorted(set(sd) - want)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_list_head(missing)}")
        if unknown:
            parts.append(f"{len(unknown)} unknown keys: {_list_head(unknown)}")
        raise CheckpointError(src, f"{layout}-layout Wan DiT checkpoint does not match "
                                   f"(names given in the original Wan layout): " + "; ".join(parts))
    params = wan_state_to_params(sd, cfg, src)
    return fill_module(lambda: WanDiT(cfg, rngs=nnx.Rngs(0)), params, src)
