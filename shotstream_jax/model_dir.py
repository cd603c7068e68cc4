"""Model directories: `config.json` plus one orbax checkpoint per component.

    DIR/config.json      {"format": "shotstream_jax/1", "config": {...ShotStream config...},
                          "dit": {WanDiTConfig}, "vae": {WanVAEConfig}, "umt5": {UMT5Config},
                          "tokenizer": "tokenizer.json" | "spiece.model" | "bytes"}
    DIR/dit/             orbax checkpoint of the WanDiT (the causal student for generation)
    DIR/vae/             orbax checkpoint of the WanVAE
    DIR/text_encoder/    orbax checkpoint of the umT5 encoder
    DIR/tokenizer.json or DIR/spiece.model   the umT5 tokenizer ("bytes": the toy byte tokenizer)

A directory with only `dit` is a converted DiT (`load_dit`); generation needs all
components (`load_pipeline`). Directories are written atomically.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Optional

import ml_collections
from flax import nnx

from shotstream_jax import checkpoint
from shotstream_jax.models.umt5 import UMT5Config, UMT5Encoder
from shotstream_jax.models.wan_dit import WanDiT, WanDiTConfig
from shotstream_jax.models.wan_vae import WanVAE, WanVAEConfig

FORMAT = "shotstream_jax/1"


def _json_ready(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def dit_meta(dit_cfg: WanDiTConfig, config: Optional[ml_collections.ConfigDict] = None) -> dict:
    """config.json of a directory holding (at least) a DiT of `dit_cfg`."""
    meta = {"format": FORMAT, "dit": _json_ready(dataclasses.asdict(dit_cfg))}
    if config is not None:
        meta["config"] = config.to_dict()
    return meta


def save(out_dir: str, dit: WanDiT, *, vae: Optional[WanVAE] = None, text_model: Optional[UMT5Encoder] = None,
         tokenizer: Optional[str] = None, config: Optional[ml_collections.ConfigDict] = None,
         overwrite: bool = False) -> None:
    """Write a model directory atomically. `tokenizer`: a tokenizer.json / spiece.model path, or "bytes"."""
    meta = dit_meta(dit.cfg, config)
    with checkpoint.atomic_directory(out_dir, overwrite=overwrite) as tmp:
        checkpoint.save_state(os.path.join(tmp, "dit"), dit)
        if vae is not None:
            meta["vae"] = _json_ready(dataclasses.asdict(vae.cfg))
            checkpoint.save_state(os.path.join(tmp, "vae"), vae)
        if text_model is not None:
            meta["umt5"] = _json_ready(dataclasses.asdict(text_model.cfg))
            checkpoint.save_state(os.path.join(tmp, "text_encoder"), text_model)
        if tokenizer == "bytes":
            meta["tokenizer"] = "bytes"
        elif tokenizer is not None:
            name = os.path.basename(tokenizer)
            if name not in ("tokenizer.json", "spiece.model"):
                raise ValueError(f"{tokenizer}: expected a tokenizer.json or spiece.model file")
            shutil.copyfile(tokenizer, os.path.join(tmp, name))
            meta["tokenizer"] = name
        checkpoint.write_json(os.path.join(tmp, "config.json"), meta)


def replace_vae(src_dir: str, out_dir: str, vae: WanVAE) -> None:
    """Write model directory `src_dir` to `out_dir` (atomically, replacing it) with `vae` as its VAE."""
    meta = _meta(src_dir)
    with checkpoint.atomic_directory(out_dir, overwrite=True) as tmp:
        for name in os.listdir(src_dir):
            if name not in ("vae", "config.json"):
                _copy_tree(checkpoint.as_path(os.path.join(src_dir, name)), checkpoint.as_path(os.path.join(tmp, name)))
        meta["vae"] = _json_ready(dataclasses.asdict(vae.cfg))
        checkpoint.save_state(os.path.join(tmp, "vae"), vae)
        checkpoint.write_json(os.path.join(tmp, "config.json"), meta)


def copy_encoders(src_dir, out_dir) -> dict:
    """Copy the VAE, umT5 and tokenizer of model directory `src_dir` into `out_dir` (epath-able);
    returns their config.json entries for the caller to write."""
    src, out = checkpoint.as_path(src_dir), checkpoint.as_path(out_dir)
    meta = _meta(str(src))
    missing = [k for k in ("vae", "umt5", "tokenizer") if k not in meta]
    if missing:
        raise ValueError(f"{src}: holds no {', '.join(missing)}; data.encoder_dir must be a full model directory")
    names = ["vae", "text_encoder"] + ([] if meta["tokenizer"] == "bytes" else [meta["tokenizer"]])
    for name in names:
        _copy_tree(src / name, out / name)
    return {k: meta[k] for k in ("vae", "umt5", "tokenizer")}


def _copy_tree(src, dst) -> None:
    if src.is_dir():
        dst.mkdir(parents=True, exist_ok=True)
        for child in src.iterdir():
            _copy_tree(child, dst / child.name)
    else:
        src.copy(dst, overwrite=True)


def _meta(model_dir: str) -> dict:
    meta = checkpoint.read_json(os.path.join(model_dir, "config.json"))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "dit" not in meta:
        raise ValueError(f"{model_dir}/config.json: not a shotstream_jax model directory; "
                         "convert PyTorch weights with shotstream-convert")
    return meta


# WanDiTConfig fields that say how a DiT runs, not what it computes: free to differ from the saved ones.
_RUNTIME_FIELDS = ("param_dtype", "dtype", "remat", "remat_policy", "scan_unroll", "attention_impl", "fp8")


def saved_dit_config(model_dir: str) -> WanDiTConfig:
    """The DiT architecture recorded in a model directory's config.json."""
    return WanDiTConfig.from_dict(_meta(model_dir)["dit"])


def check_dit(model_dir: str, dit_cfg: WanDiTConfig) -> None:
    """Raise ValueError when the DiT saved in `model_dir` is not the architecture `dit_cfg` builds.

    Some fields (num_heads, rope_theta, eps) change no parameter shape, so a checkpoint
    of another such architecture would restore without error and compute something else.
    """
    saved = saved_dit_config(model_dir)
    diff = [f"{f.name} {getattr(saved, f.name)!r} there, {getattr(dit_cfg, f.name)!r} in the config"
            for f in dataclasses.fields(WanDiTConfig)
            if f.name not in _RUNTIME_FIELDS and getattr(saved, f.name) != getattr(dit_cfg, f.name)]
    if diff:
        raise ValueError(f"{model_dir}: its DiT is not the config's model section: " + "; ".join(diff))


def load_dit(model_dir: str, **overrides) -> WanDiT:
    """The DiT of a model directory; `overrides` change runtime fields (dtype, attention_impl...)."""
    cfg = WanDiTConfig.from_dict({**_meta(model_dir)["dit"], **overrides})
    return checkpoint.load_state(os.path.join(model_dir, "dit"), lambda: WanDiT(cfg, rngs=nnx.Rngs(0)))


def _vae_config(meta: dict) -> WanVAEConfig:
    return WanVAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["vae"].items()})


def saved_vae_config(model_dir: str) -> WanVAEConfig:
    """The VAE recorded in a model directory's config.json (its latents' mean/std included)."""
    meta = _meta(model_dir)
    if "vae" not in meta:
        raise ValueError(f"{model_dir}: holds no VAE")
    return _vae_config(meta)


def encoder_vae_config(cfg) -> WanVAEConfig:
    """The VAE of a DiT stage of `cfg`, as `train.stages.vae_params` picks it: data.encoder_dir's (the
    Shapes 4x VAE has spatial factor 4), else for toy runs the default model's tiny one, else the Wan
    VAE. Its spatial factor sets the latent grid (the toy encoder's is 8, as both of those have)."""
    path = cfg.data.get("encoder_dir")
    if not path:
        from shotstream_jax import default_model
        return default_model.VAE if cfg.size == "toy" else WanVAEConfig()
    meta = _meta(path)
    if "vae" not in meta:
        raise ValueError(f"{path}: holds no VAE; data.encoder_dir names the model directory whose VAE "
                         f"encodes the training videos")
    return _vae_config(meta)


def load_pipeline(model_dir: str, **dit_overrides):
    """(config, dit, vae, text_encoder) of a full model directory, for `ShotStream`."""
    from shotstream_jax.config import get_config
    from shotstream_jax.text import ByteTokenizer, TextEncoder, Tokenizer
    meta = _meta(model_dir)
    missing = [k for k in ("vae", "umt5", "tokenizer") if k not in meta]
    if missing:
        raise ValueError(f"{model_dir}: holds no {', '.join(missing)}; generation needs the DiT, VAE, "
                         "umT5 and tokenizer (shotstream-convert --src=... --vae=... --umt5=... --tokenizer=...)")
    config = get_config("wan_1_3b", "generate")
    if "config" in meta:
        config = ml_collections.ConfigDict(meta["config"])
    dit = load_dit(model_dir, **dit_overrides)
    config.model = ml_collections.ConfigDict(_json_ready(dataclasses.asdict(dit.cfg)))
    vae_cfg = _vae_config(meta)
    vae = checkpoint.load_state(os.path.join(model_dir, "vae"), lambda: WanVAE(vae_cfg, rngs=nnx.Rngs(0)))
    t5_cfg = UMT5Config(**meta["umt5"])
    t5 = checkpoint.load_state(os.path.join(model_dir, "text_encoder"), lambda: UMT5Encoder(t5_cfg, rngs=nnx.Rngs(0)))
    tok = ByteTokenizer() if meta["tokenizer"] == "bytes" else Tokenizer(os.path.join(model_dir, meta["tokenizer"]))
    return config, dit, vae, TextEncoder(t5, tok, text_len=dit.cfg.text_len)
