"""Wan2.1 DiT checkpoints (original Wan or diffusers layout) -> `WanDiT`.

This is the one place that knows the DiT's PyTorch key names. The original
Wan layout is the pivot: diffusers names are first renamed to it, then every
original name maps to one parameter of our module tree.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile

import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from shotstream_jax.convert.io import CheckpointError, _list_head, fill_module, read_json_config, read_state_dict
from shotstream_jax.models.wan_dit import WanDiT, WanDiTConfig, abstract_model

# diffusers name <-> original Wan name, read both ways. A template ending in '.'
# renames a prefix, any other names a whole key; {i} is a block index, {qkv} and
# {qk} one projection letter.
DIFFUSERS_AND_WAN = [
    ("scale_shift_table", "head.modulation"),
    ("proj_out.", "head.head."),
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("blocks.{i}.attn1.to_out.0.", "blocks.{i}.self_attn.o."),
    ("blocks.{i}.attn1.to_{qkv}.", "blocks.{i}.self_attn.{qkv}."),
    ("blocks.{i}.attn1.norm_{qk}.", "blocks.{i}.self_attn.norm_{qk}."),
    ("blocks.{i}.attn2.to_out.0.", "blocks.{i}.cross_attn.o."),
    ("blocks.{i}.attn2.to_{qkv}.", "blocks.{i}.cross_attn.{qkv}."),
    ("blocks.{i}.attn2.norm_{qk}.", "blocks.{i}.cross_attn.norm_{qk}."),
    ("blocks.{i}.norm2.", "blocks.{i}.norm3."),
    ("blocks.{i}.ffn.net.0.proj.", "blocks.{i}.ffn.0."),
    ("blocks.{i}.ffn.net.2.", "blocks.{i}.ffn.2."),
    ("blocks.{i}.scale_shift_table", "blocks.{i}.modulation"),
]
_FIELDS = {"i": r"\d+", "qkv": "[qkv]", "qk": "[qk]"}


def _template_regex(tpl: str) -> re.Pattern:
    rx = re.escape(tpl)
    for name, cls in _FIELDS.items():
        rx = rx.replace(re.escape("{" + name + "}"), f"(?P<{name}>{cls})")
    return re.compile("^" + rx + ("" if tpl.endswith(".") else "$"))


def _renamer(pairs):
    rules = [(_template_regex(a), b) for a, b in pairs]

    def rename(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for k, v in sd.items():
            for rx, dst in rules:
                if m := rx.match(k):
                    k = dst.format(**m.groupdict()) + k[m.end():]
                    break
            out[k] = v
        return out

    return rename


to_wan_names = _renamer(DIFFUSERS_AND_WAN)
to_wan_names.__doc__ = "Rename diffusers keys to the original Wan names; keys that match no rule are kept."
to_diffusers_names = _renamer([(b, a) for a, b in DIFFUSERS_AND_WAN])
to_diffusers_names.__doc__ = "Rename original Wan keys to the diffusers names."

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


def _unconvert(kind: str, x: np.ndarray, torch_shape: tuple) -> np.ndarray:
    """Inverse of `_convert`, back to the PyTorch shape."""
    if kind == "linear":
        return x.T
    if kind == "conv3d":
        d, c, pt, ph, pw = torch_shape
        return x.reshape(pt, ph, pw, c, d).transpose(4, 3, 0, 1, 2)
    if kind == "squeeze0":
        return x[None]
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


def params_to_wan_state(dit: WanDiT) -> dict[str, np.ndarray]:
    """Our module's parameters -> the original Wan state dict (the tables above read backwards)."""
    cfg = dit.cfg
    flat = {".".join(map(str, path)): np.asarray(var.get_value())
            for path, var in nnx.to_flat_state(nnx.state(dit, nnx.Param))}
    pt, ph, pw = cfg.patch_size
    conv_shape = (cfg.dim, cfg.in_channels, pt, ph, pw)
    sd = {}
    for name, (ours, kind) in GLOBAL_KEYS.items():
        sd[name] = _unconvert(kind, flat[ours], conv_shape)
    for name, (ours, kind) in BLOCK_KEYS.items():
        key = f"blocks.{ours}"
        if key in flat:
            for i in range(cfg.num_layers):
                sd[f"blocks.{i}.{name}"] = _unconvert(kind, flat[key][i], conv_shape)
    return {k: np.ascontiguousarray(v) for k, v in sd.items()}


def wan_json_config(cfg: WanDiTConfig) -> dict:
    """config.json of the original Wan release (`WanModel`)."""
    return {"_class_name": "WanModel", "model_type": "t2v", "patch_size": list(cfg.patch_size),
            "text_len": cfg.text_len, "in_dim": cfg.in_channels, "dim": cfg.dim, "ffn_dim": cfg.ffn_dim,
            "freq_dim": cfg.freq_dim, "text_dim": cfg.text_dim, "out_dim": cfg.out_channels,
            "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "window_size": [-1, -1],
            "qk_norm": cfg.qk_norm, "cross_attn_norm": cfg.cross_attn_norm, "eps": cfg.eps}


def diffusers_json_config(cfg: WanDiTConfig) -> dict:
    """config.json of diffusers' `WanTransformer3DModel`."""
    return {"_class_name": "WanTransformer3DModel", "patch_size": list(cfg.patch_size),
            "num_attention_heads": cfg.num_heads, "attention_head_dim": cfg.dim // cfg.num_heads,
            "in_channels": cfg.in_channels, "out_channels": cfg.out_channels, "text_dim": cfg.text_dim,
            "freq_dim": cfg.freq_dim, "ffn_dim": cfg.ffn_dim, "num_layers": cfg.num_layers,
            "cross_attn_norm": cfg.cross_attn_norm, "qk_norm": "rms_norm_across_heads" if cfg.qk_norm else None,
            "eps": cfg.eps, "image_dim": None, "added_kv_proj_dim": None, "rope_max_seq_len": 1024}


def export_wan_dit(dit: WanDiT, out_dir: str, layout: str, *, overwrite: bool = False) -> str:
    """Write `dit` as `out_dir/diffusion_pytorch_model.safetensors` + `config.json` in the original Wan
    (`layout='original'`) or the diffusers layout; written to a temporary folder, then renamed."""
    if layout not in ("original", "diffusers"):
        raise ValueError(f"export layout must be 'original' or 'diffusers', got {layout!r}")
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir}: exists; pass --overwrite to replace it")
    sd = params_to_wan_state(dit)
    config = wan_json_config(dit.cfg)
    if layout == "diffusers":
        sd, config = to_diffusers_names(sd), diffusers_json_config(dit.cfg)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        save_file(sd, os.path.join(tmp, "diffusion_pytorch_model.safetensors"))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
