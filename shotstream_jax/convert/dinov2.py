"""Loading transformers `Dinov2Model` checkpoints into `models.dinov2.DINOv2`.

A checkpoint is the directory `Dinov2Model.save_pretrained` writes (config.json
plus model.safetensors or pytorch_model.bin), e.g. facebook/dinov2-base; keys
of a model saved inside a task head ('dinov2.' prefix) are accepted too.
Every torch key name is in `DINOV2_KEYS`; leaves convert as in `convert.clip.map_keys`.
"""
from __future__ import annotations

from shotstream_jax.convert.clip import fill_from_config, map_keys, read_config
from shotstream_jax.convert.io import CheckpointError, read_state_dict
from shotstream_jax.models.clip import TowerConfig
from shotstream_jax.models.dinov2 import DINOv2, DINOv2Config

_LAYER = r"encoder\.layer\.(\d+)\."
DINOV2_KEYS = [
    (_LAYER + r"norm1", r"encoder.layers.\1.norm1", "norm"),
    (_LAYER + r"attention\.attention\.query", r"encoder.layers.\1.attn.q", "linear"),
    (_LAYER + r"attention\.attention\.key", r"encoder.layers.\1.attn.k", "linear"),
    (_LAYER + r"attention\.attention\.value", r"encoder.layers.\1.attn.v", "linear"),
    (_LAYER + r"attention\.output\.dense", r"encoder.layers.\1.attn.out", "linear"),
    (_LAYER + r"layer_scale1\.lambda1", r"encoder.layers.\1.ls1.scale", "token"),
    (_LAYER + r"norm2", r"encoder.layers.\1.norm2", "norm"),
    (_LAYER + r"mlp\.fc1", r"encoder.layers.\1.mlp.fc1", "linear"),
    (_LAYER + r"mlp\.fc2", r"encoder.layers.\1.mlp.fc2", "linear"),
    (_LAYER + r"layer_scale2\.lambda1", r"encoder.layers.\1.ls2.scale", "token"),
    (r"embeddings\.cls_token", "cls_token", "token"),
    (r"embeddings\.position_embeddings", "pos_embed", "table"),
    (r"embeddings\.patch_embeddings\.projection", "patch_embed", "patch"),
    (r"layernorm", "norm", "norm"),
]

# The masked-image-modelling token is used in pre-training only.
UNUSED = (r"embeddings\.mask_token",)


def dinov2_config(cfg: dict) -> DINOv2Config:
    """DINOv2Config from a transformers config.json (missing fields: transformers' defaults)."""
    if cfg.get("use_swiglu_ffn"):
        raise ValueError("use_swiglu_ffn (the giant model's SwiGLU MLP) is not supported")
    if not cfg.get("qkv_bias", True):
        raise ValueError("qkv_bias=False is not supported")
    d = cfg.get("hidden_size", 768)
    return DINOv2Config(
        tower=TowerConfig(d, cfg.get("num_hidden_layers", 12), cfg.get("num_attention_heads", 12),
                          int(d * cfg.get("mlp_ratio", 4)), cfg.get("hidden_act", "gelu"),
                          cfg.get("layer_norm_eps", 1e-6)),
        image_size=cfg.get("image_size", 224), patch_size=cfg.get("patch_size", 14))


def load_dinov2(path: str) -> DINOv2:
    """A `DINOv2` from a transformers Dinov2Model directory.

    Missing, unknown or mis-shaped tensors are reported together in one `CheckpointError`.
    """
    sd, src = read_state_dict(path, prefer=("model.safetensors", "model.safetensors.index.json"))
    if any(k.startswith("dinov2.") for k in sd):
        sd = {k[len("dinov2."):]: v for k, v in sd.items() if k.startswith("dinov2.")}  # drop the task head
    if "embeddings.cls_token" not in sd:
        raise CheckpointError(src, "not a transformers Dinov2Model checkpoint (no 'embeddings.cls_token')")
    cfg = read_config(path, src, "DINOv2")
    if cfg.get("model_type", "dinov2") != "dinov2":
        raise CheckpointError(src, f"config.json describes a {cfg['model_type']!r} model, not 'dinov2'")
    return fill_from_config(cfg, dinov2_config, DINOv2, map_keys(sd, DINOV2_KEYS, UNUSED), src)
