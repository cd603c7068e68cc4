"""Loading transformers `CLIPModel` checkpoints into `models.clip.CLIP`.

A checkpoint is the directory `CLIPModel.save_pretrained` writes (config.json
plus model.safetensors, or pytorch_model.bin, possibly sharded), e.g.
openai/clip-vit-large-patch14. Sizes come from config.json; fields it leaves
out take transformers' defaults. Every torch key name is in `CLIP_KEYS`.

`map_keys` (shared with the DINOv2 converter) renames torch modules to ours
and converts leaves by module kind: Linear weight [out, in] -> kernel
[in, out]; LayerNorm weight -> scale; a patch Conv2d [out, in, kh, kw] ->
the kernel [kh*kw*in, out] of `models.clip.patchify` patches; a class token
(any [1, 1, d] or [d]) -> [d] ("token"); a position table ([1, n, d] or an
Embedding's [n, d]) -> [n, d] ("table").
"""
from __future__ import annotations

import re

import numpy as np
from flax import nnx

from shotstream_jax.convert.io import CheckpointError, fill_module, read_json_config, read_state_dict
from shotstream_jax.models.clip import CLIP, CLIPConfig, TowerConfig

LAYER_KEYS = [  # inside one encoder layer: (torch module, ours, kind)
    (r"self_attn\.q_proj", "attn.q", "linear"),
    (r"self_attn\.k_proj", "attn.k", "linear"),
    (r"self_attn\.v_proj", "attn.v", "linear"),
    (r"self_attn\.out_proj", "attn.out", "linear"),
    (r"layer_norm1", "norm1", "norm"),
    (r"mlp\.fc1", "mlp.fc1", "linear"),
    (r"mlp\.fc2", "mlp.fc2", "linear"),
    (r"layer_norm2", "norm2", "norm"),
]

CLIP_KEYS = [(rf"{tower}_model\.encoder\.layers\.(\d+)\.{t}", rf"{tower}.encoder.layers.\1.{o}", k)
             for tower in ("text", "vision") for t, o, k in LAYER_KEYS] + [
    (r"text_model\.embeddings\.token_embedding", "text.token_embed", "embed"),
    (r"text_model\.embeddings\.position_embedding", "text.pos_embed", "table"),
    (r"text_model\.final_layer_norm", "text.final_norm", "norm"),
    (r"vision_model\.embeddings\.class_embedding", "vision.class_embed", "token"),
    (r"vision_model\.embeddings\.patch_embedding", "vision.patch_embed", "patch"),
    (r"vision_model\.embeddings\.position_embedding", "vision.pos_embed", "table"),
    (r"vision_model\.pre_layrnorm", "vision.pre_norm", "norm"),  # sic: the reference's spelling
    (r"vision_model\.post_layernorm", "vision.post_norm", "norm"),
    (r"visual_projection", "visual_projection", "linear"),
    (r"text_projection", "text_projection", "linear"),
]

UNUSED = (r"logit_scale", r".*\.position_ids")  # the contrastive temperature; non-persistent buffers

_LEAVES = {  # kind -> {torch leaf: our leaf}
    "linear": {"weight": "kernel", "bias": "bias"},
    "patch": {"weight": "kernel", "bias": "bias"},
    "norm": {"weight": "scale", "bias": "bias"},
    "embed": {"weight": "embedding"},
}


def _convert_leaf(kind: str, leaf: str, v: np.ndarray) -> np.ndarray:
    if kind == "linear" and leaf == "weight":
        return v.T
    if kind == "patch" and leaf == "weight":  # [out, in, kh, kw] -> [kh, kw, in, out] -> flat patches
        return v.transpose(2, 3, 1, 0).reshape(-1, v.shape[0])
    return v


def _rename(key: str, v: np.ndarray, table):
    """(our name, array) for one torch tensor, or None when no table row knows it."""
    for pat, ours, kind in table:
        m = re.fullmatch(pat + r"(?:\.(\w+))?", key)
        if not m:
            continue
        leaf = m.group(m.re.groups)
        if kind in ("token", "table") and leaf in (None, "weight"):  # a bare nn.Parameter, or an nn.Embedding
            return m.expand(ours), v.reshape(-1) if kind == "token" else v.reshape(-1, v.shape[-1])
        if kind in _LEAVES and leaf in _LEAVES[kind]:
            return m.expand(ours) + "." + _LEAVES[kind][leaf], _convert_leaf(kind, leaf, v)
        return None
    return None


def map_keys(sd: dict, table, unused=()) -> dict[str, np.ndarray]:
    """torch state dict -> {our dotted parameter path: array}. Unknown keys keep their
    torch name, so that `fill_module` reports them; `unused` patterns are dropped."""
    out = {}
    for key, v in sd.items():
        if any(re.fullmatch(u, key) for u in unused):
            continue
        v = np.asarray(v, np.float32)
        name, v = _rename(key, v, table) or (key, v)
        out[name] = v
    return out


def read_config(path: str, src: str, model: str) -> dict:
    cfg = read_json_config(path)
    if cfg is None:
        raise CheckpointError(src, f"no config.json beside the weights; give the {model} directory that "
                                   "save_pretrained wrote (config.json + model.safetensors)")
    return cfg


def fill_from_config(cfg: dict, make_config, model_cls, arrays: dict, src: str):
    """`model_cls(make_config(cfg))` filled from `arrays`; a config.json the model cannot be
    built from is reported as a CheckpointError too."""
    try:
        config = make_config(cfg)
        return fill_module(lambda: model_cls(config, rngs=nnx.Rngs(0)), arrays, src)
    except CheckpointError:
        raise
    except ValueError as e:
        raise CheckpointError(src, f"config.json is not usable ({e})") from None


def _tower(cfg: dict, defaults: TowerConfig) -> TowerConfig:
    return TowerConfig(
        hidden_size=cfg.get("hidden_size", defaults.hidden_size),
        num_layers=cfg.get("num_hidden_layers", defaults.num_layers),
        num_heads=cfg.get("num_attention_heads", defaults.num_heads),
        intermediate_size=cfg.get("intermediate_size", defaults.intermediate_size),
        hidden_act=cfg.get("hidden_act", defaults.hidden_act),
        eps=cfg.get("layer_norm_eps", defaults.eps))


def clip_config(cfg: dict) -> CLIPConfig:
    """CLIPConfig from a transformers config.json (missing fields: transformers' defaults)."""
    t, v = cfg.get("text_config") or {}, cfg.get("vision_config") or {}
    return CLIPConfig(
        text=_tower(t, TowerConfig(512, 12, 8, 2048)),
        vision=_tower(v, TowerConfig(768, 12, 12, 3072)),
        image_size=v.get("image_size", 224), patch_size=v.get("patch_size", 32),
        vocab_size=t.get("vocab_size", 49408), max_positions=t.get("max_position_embeddings", 77),
        projection_dim=cfg.get("projection_dim", 512), eos_token_id=t.get("eos_token_id", 49407))


def load_clip(path: str) -> CLIP:
    """A `CLIP` (both towers, both projections) from a transformers CLIPModel directory.

    Missing, unknown or mis-shaped tensors are reported together in one `CheckpointError`.
    """
    sd, src = read_state_dict(path, prefer=("model.safetensors", "model.safetensors.index.json"))
    if not any(k.startswith("vision_model.") for k in sd) or not any(k.startswith("text_model.") for k in sd):
        raise CheckpointError(src, "not a transformers CLIPModel checkpoint (expected 'vision_model.*' and "
                                   "'text_model.*' tensors: both towers are needed)")
    cfg = read_config(path, src, "CLIP")
    if cfg.get("model_type", "clip") != "clip":
        raise CheckpointError(src, f"config.json describes a {cfg['model_type']!r} model, not 'clip'")
    return fill_from_config(cfg, clip_config, CLIP, map_keys(sd, CLIP_KEYS, UNUSED), src)
