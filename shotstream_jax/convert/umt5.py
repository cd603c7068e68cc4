"""Loading umT5 encoder checkpoints into `UMT5Encoder`.

Two layouts, told apart by their keys:
  * transformers `UMT5EncoderModel` (a directory with config.json and
    model.safetensors, possibly sharded): `shared.weight`,
    `encoder.block.N.layer.0.SelfAttention.q.weight`, ...;
  * original Wan (`models_t5_umt5-xxl-enc-bf16.pth`, wan/modules/t5.py
    `T5Encoder`): `token_embedding.weight`, `blocks.N.attn.q.weight`,
    `blocks.N.pos_embedding.embedding.weight`, `blocks.N.ffn.gate.0.weight`, ...

Every torch key name lives in the two tables below. torch Linear weights
[out, in] become kernels [in, out]; embedding tables keep their layout.
"""
from __future__ import annotations

import re
from typing import Optional

import numpy as np
from flax import nnx

from shotstream_jax.convert.io import CheckpointError, fill_module, read_json_config, read_state_dict
from shotstream_jax.models.umt5 import UMT5Config, UMT5Encoder

# (torch pattern, our name); the first match wins.
TRANSFORMERS_KEYS = [
    (r"^shared\.weight$", "token_embedding.embedding"),
    (r"^encoder\.embed_tokens\.weight$", "token_embedding.embedding"),  # tied copy of shared
    (r"^encoder\.block\.(\d+)\.layer\.0\.layer_norm\.weight$", r"blocks.\1.norm1.scale"),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.weight$", r"blocks.\1.attn.\2.kernel"),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.weight$",
     r"blocks.\1.attn.pos_embedding.embedding"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight$", r"blocks.\1.norm2.scale"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.(wi_0|wi_1|wo)\.weight$", r"blocks.\1.ffn.\2.kernel"),
    (r"^encoder\.final_layer_norm\.weight$", "norm.scale"),
]

ORIGINAL_KEYS = [
    (r"^token_embedding\.weight$", "token_embedding.embedding"),
    (r"^blocks\.(\d+)\.norm1\.weight$", r"blocks.\1.norm1.scale"),
    (r"^blocks\.(\d+)\.attn\.([qkvo])\.weight$", r"blocks.\1.attn.\2.kernel"),
    (r"^blocks\.(\d+)\.pos_embedding\.embedding\.weight$", r"blocks.\1.attn.pos_embedding.embedding"),
    (r"^blocks\.(\d+)\.norm2\.weight$", r"blocks.\1.norm2.scale"),
    (r"^blocks\.(\d+)\.ffn\.gate\.0\.weight$", r"blocks.\1.ffn.wi_0.kernel"),  # gate = [Linear, GELU]
    (r"^blocks\.(\d+)\.ffn\.fc1\.weight$", r"blocks.\1.ffn.wi_1.kernel"),
    (r"^blocks\.(\d+)\.ffn\.fc2\.weight$", r"blocks.\1.ffn.wo.kernel"),
    (r"^norm\.weight$", "norm.scale"),
]


def _rename(key: str, table) -> str:
    for pat, rep in table:
        new, n = re.subn(pat, rep, key)
        if n:
            return new
    return key  # unknown: fill_module reports it under its own name


def _detect(sd: dict, src: str) -> str:
    if "token_embedding.weight" in sd:
        return "original"
    if "shared.weight" in sd or "encoder.embed_tokens.weight" in sd:
        return "transformers"
    raise CheckpointError(
        src, "not a umT5 encoder checkpoint (found neither 'token_embedding.weight' (original Wan) nor "
             "'shared.weight' (transformers UMT5EncoderModel)); pass models_t5_umt5-xxl-enc-bf16.pth "
             "or the text_encoder/ directory")


def _config_from_weights(ours: dict, src: str, dtype: str, param_dtype: str) -> UMT5Config:
    try:
        vocab, d_model = ours["token_embedding.embedding"].shape
        buckets, heads = ours["blocks.0.attn.pos_embedding.embedding"].shape
        inner = ours["blocks.0.attn.q.kernel"].shape[1]
        d_ff = ours["blocks.0.ffn.wi_1.kernel"].shape[1]
    except KeyError as e:
        raise CheckpointError(src, f"cannot read the umT5 sizes off the weights (missing {e})") from e
    layers = 1 + max(int(k.split(".")[1]) for k in ours if k.startswith("blocks."))
    # max_distance is not stored; 128 is the original T5RelativeEmbedding default.
    return UMT5Config(vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=d_ff, num_heads=heads,
                      num_layers=layers, num_buckets=buckets, dtype=dtype, param_dtype=param_dtype)


def _config_from_json(cfg: dict, src: str, dtype: str, param_dtype: str) -> UMT5Config:
    if cfg.get("feed_forward_proj", "gated-gelu") != "gated-gelu":
        raise CheckpointError(src, f"feed_forward_proj {cfg['feed_forward_proj']!r} is not umT5's gated-gelu")
    return UMT5Config(
        vocab_size=cfg["vocab_size"], d_model=cfg["d_model"], d_kv=cfg["d_kv"], d_ff=cfg["d_ff"],
        num_heads=cfg["num_heads"], num_layers=cfg["num_layers"],
        num_buckets=cfg.get("relative_attention_num_buckets", 32),
        max_distance=cfg.get("relative_attention_max_distance", 128),
        eps=cfg.get("layer_norm_epsilon", 1e-6), dtype=dtype, param_dtype=param_dtype)


def load_umt5(path: str, config: Optional[UMT5Config] = None, dtype: str = "float32",
              param_dtype: str = "float32") -> UMT5Encoder:
    """A `UMT5Encoder` from a transformers UMT5EncoderModel checkpoint or an original Wan umT5 .pth.

    Sizes come from `config`, else config.json, else the weights. Unknown,
    missing or mis-shaped tensors are all reported in one `CheckpointError`.
    """
    sd, src = read_state_dict(path, prefer=("model.safetensors", "model.safetensors.index.json"))
    layout = _detect(sd, src)
    if layout == "transformers" and "shared.weight" in sd:
        sd.pop("encoder.embed_tokens.weight", None)  # the same tied table twice
    table = ORIGINAL_KEYS if layout == "original" else TRANSFORMERS_KEYS
    ours = {}
    for k, v in sd.items():
        name = _rename(k, table)
        v = np.asarray(v)
        ours[name] = v.T if name.endswith(".kernel") and v.ndim == 2 else v
    if config is None:
        json_cfg = read_json_config(path) if layout == "transformers" else None
        config = (_config_from_json(json_cfg, src, dtype, param_dtype) if json_cfg is not None
                  else _config_from_weights(ours, src, dtype, param_dtype))
    return fill_module(lambda: UMT5Encoder(config, rngs=nnx.Rngs(0)), ours, src)
