"""WanVAE against diffusers' AutoencoderKLWan (tiny random model), in both checkpoint layouts."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from shotstream_jax import convert, default_model
from shotstream_jax.convert import CheckpointError
from shotstream_jax.models.inference import for_inference
from shotstream_jax.models.wan_vae import DecodeCache, WanVAE, WanVAEConfig, _decode_step, decode_step
from tests import hlo
from tests.torch_refs import TINY_VAE as TINY
from tests.torch_refs import tiny_wan_vae

H, W = 16, 24  # latents 2 x 3


@pytest.fixture(scope="module")
def ref():
    return tiny_wan_vae()


def _original_name(key: str) -> str:
    """diffusers AutoencoderKLWan key -> original Wan2.1 `WanVAE_` key (written from wan/modules/vae.py)."""
    r = TINY["num_res_blocks"]
    key = {"quant_conv": "conv1", "post_quant_conv": "conv2"}.get(key.split(".")[0], key.split(".")[0]) \
        + key[len(key.split(".")[0]):]
    key = re.sub(r"^encoder\.down_blocks\.", "encoder.downsamples.", key)
    m = re.match(r"^decoder\.up_blocks\.(\d+)\.(?:resnets\.(\d+)|upsamplers\.0)\.", key)
    if m:
        j = int(m.group(2)) if m.group(2) is not None else r + 1
        key = f"decoder.upsamples.{int(m.group(1)) * (r + 2) + j}." + key[m.end():]
    for a, b in [("norm1", "residual.0"), ("conv1", "residual.2"), ("norm2", "residual.3"),
                 ("conv2", "residual.6"), ("conv_shortcut", "shortcut"),
                 ("mid_block.resnets.0", "middle.0"), ("mid_block.attentions.0", "middle.1"),
                 ("mid_block.resnets.1", "middle.2"), ("norm_out", "head.0"), ("conv_out", "head.2")]:
        key = key.replace(f".{a}.", f".{b}.")
    return re.sub(r"^(encoder|decoder)\.conv_in\.", r"\1.conv1.", key)


def _save_original(ref, path):
    torch.save({_original_name(k): v for k, v in ref.state_dict().items()}, path)


@pytest.fixture(scope="module")
def vae(ref, tmp_path_factory):
    d = tmp_path_factory.mktemp("diffusers")
    ref.save_pretrained(d)
    return convert.load_wan_vae(str(d))


@pytest.fixture(scope="module")
def vae_original(ref, tmp_path_factory):
    p = tmp_path_factory.mktemp("original") / "Wan2.1_VAE.pth"
    _save_original(ref, p)
    return convert.load_wan_vae(str(p))


def _video(t, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (1, t, H, W, 3)).astype(np.float32)


def _to_torch(x):  # [B, T, H, W, C] -> [B, C, T, H, W]
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1)))


def _from_torch(x):
    return np.moveaxis(x.detach().numpy(), 1, -1)


def _close(ours, theirs, tol=1e-4):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    err = np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-6)
    assert err < tol, f"max abs err {err:.2e} relative to output scale"


def test_original_layout_loads_the_same_model(vae, vae_original, ref):
    """Reference: diffusers AutoencoderKLWan encode/decode, through the original Wan2.1 .pth layout."""
    c = vae_original.cfg
    assert (c.base_dim, c.z_dim, c.dim_mult, c.num_res_blocks, c.temporal_downsample) == (
        8, 16, (1, 2, 2, 2), 1, (False, True, True))
    a, b = nnx.to_flat_state(nnx.state(vae)), nnx.to_flat_state(nnx.state(vae_original))
    for (pa, va), (pb, vb) in zip(a, b):
        assert pa == pb
        np.testing.assert_array_equal(va.get_value(), vb.get_value())
    x = _video(5)
    with torch.no_grad():
        want = _from_torch(ref.encode(_to_torch(x)).latent_dist.mean)
    _close(vae_original.encode(jnp.asarray(x)), want)


@pytest.mark.parametrize("t", [1, 5, 9])
def test_encode_mean_matches_diffusers(vae, ref, t):
    """Reference: AutoencoderKLWan.encode(x).latent_dist.mean."""
    x = _video(t)
    with torch.no_grad():
        want = _from_torch(ref.encode(_to_torch(x)).latent_dist.mean)
    got = vae.encode(jnp.asarray(x))
    assert got.shape == (1, 1 + (t - 1) // 4, H // 8, W // 8, 16)
    _close(got, want)


@pytest.mark.parametrize("t", [1, 5, 9])
def test_decode_matches_diffusers(vae, ref, t):
    """Reference: AutoencoderKLWan.decode(z).sample (clamped to [-1, 1])."""
    z = np.random.default_rng(1).normal(size=(1, 1 + (t - 1) // 4, H // 8, W // 8, 16)).astype(np.float32)
    with torch.no_grad():
        want = _from_torch(ref.decode(_to_torch(z)).sample)
    got = vae.decode(jnp.asarray(z))
    assert got.shape == (1, t, H, W, 3)
    _close(got, want)


def _bf16_copy(vae, monkeypatch):
    """The model generation runs on accelerators: bf16 parameters, convs, activations and caches."""
    assert for_inference(vae, "bfloat16") is vae  # on CPU: float32, as configured
    with monkeypatch.context() as m:
        m.setattr(jax, "default_backend", lambda: "gpu")
        vae16 = for_inference(vae, "bfloat16")
    assert vae16.cfg.dtype == "bfloat16"
    params = jax.tree.leaves(nnx.state(vae16, nnx.Param))
    assert {p.dtype for p in params if p.ndim > 1} == {jnp.dtype(jnp.bfloat16)}  # conv and linear weights
    # norm scales and conv biases enter float32 arithmetic: kept float32
    assert vae16.decoder.norm_out.gamma.dtype == vae16.decoder.conv_out.bias.dtype == jnp.float32
    return vae16


# bf16 tolerance (8-bit mantissa through ~20 conv layers), relative to the output's max magnitude:
# mean error 1%, max error 5%.
BF16_MEAN, BF16_MAX = 0.01, 0.05


def _close_bf16(ours, theirs):
    ours, theirs = np.asarray(ours, np.float32), np.asarray(theirs)
    err = np.abs(ours - theirs) / np.abs(theirs).max()
    assert err.mean() < BF16_MEAN and err.max() < BF16_MAX, (err.mean(), err.max())


def test_bf16_vae_within_tolerance_of_diffusers(vae, ref, monkeypatch):
    """Reference: AutoencoderKLWan decode and encode in float32 (torch)."""
    vae16 = _bf16_copy(vae, monkeypatch)
    z = np.random.default_rng(1).normal(size=(1, 3, H // 8, W // 8, 16)).astype(np.float32)
    with torch.no_grad():
        want = _from_torch(ref.decode(_to_torch(z)).sample)
    cache = vae16.init_decode_cache(1, H // 8, W // 8)
    assert all(c.dtype == jnp.bfloat16 for c in jax.tree.leaves(cache))
    first, cache = decode_step(vae16, jnp.asarray(z[:, :1]), cache)
    rest, cache = decode_step(vae16, jnp.asarray(z[:, 1:]), cache)  # streamed with bf16 caches
    assert all(c.dtype == jnp.bfloat16 for c in jax.tree.leaves(cache))
    _close_bf16(np.concatenate([first, rest], axis=1), want)
    x = _video(5)
    with torch.no_grad():
        want = _from_torch(ref.encode(_to_torch(x)).latent_dist.mean)
    _close_bf16(vae16.encode(jnp.asarray(x)), want)


@pytest.mark.parametrize("chunk", [1, 3])
def test_streaming_decode_equals_whole(vae, chunk):
    """Reference: our own whole-shot `decode` (itself checked against diffusers above)."""
    z = jnp.asarray(np.random.default_rng(2).normal(size=(1, 7, H // 8, W // 8, 16)).astype(np.float32))
    whole = vae.decode(z)
    cache = vae.init_decode_cache(1, H // 8, W // 8)
    parts = []
    compiled = _decode_step._cache_size()
    for s in range(0, 7, chunk):
        frames, cache = decode_step(vae, z[:, s:s + chunk], cache)
        parts.append(frames)
    assert parts[0].shape[1] == 1 + 4 * (min(chunk, 7) - 1)
    # one compile for the first chunk, one per later chunk shape (3, 3, 1 -> two)
    assert _decode_step._cache_size() - compiled <= (2 if chunk == 1 else 3)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, atol=1e-5)


def test_chunk_decode_lowered_has_no_cache_concatenate():
    """Reference: the operand types of the StableHLO concatenates of the bf16 per-chunk decode (3 latent
    frames, as the pipeline streams them), first and later chunk: no conv cache is copied into a
    [cache, input] buffer (before this change: one such concatenate per temporal conv)."""
    vae = nnx.eval_shape(lambda: WanVAE(dataclasses.replace(default_model.VAE, dtype="bfloat16"), rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(vae)
    z = jax.ShapeDtypeStruct((1, 3, 2, 3, 16), jnp.float32)
    feats = jax.eval_shape(lambda: vae.init_decode_cache(1, 2, 3)).feats
    cache_types = {hlo.tensor_type(c) for c in jax.tree.leaves(feats)}
    assert all(t.endswith("xbf16") for t in cache_types)
    for started in (False, True):
        lowered = _decode_step.trace(graphdef, state, z, DecodeCache(feats, started)).lower()
        assert not cache_types & set(hlo.operands(lowered.as_text(), "concatenate"))
        assert {hlo.tensor_type(c) for c in jax.tree.leaves(lowered.out_info[1])} == cache_types


def test_normalize_roundtrip():
    """Reference: the Wan2.1 latent mean/std of the original WanVAE (z - mean) / std."""
    cfg = WanVAEConfig()
    z = jnp.asarray(np.random.default_rng(3).normal(size=(2, 3, 4, 16)).astype(np.float32))
    np.testing.assert_allclose(cfg.normalize(z)[..., 0], (z[..., 0] + 0.7571) / 2.8184, rtol=1e-6)
    np.testing.assert_allclose(cfg.denormalize(cfg.normalize(z)), z, atol=1e-5)


def test_bad_inputs(vae):
    """Reference: the documented input contract of encode/decode."""
    with pytest.raises(ValueError, match="got 4 frames"):
        vae.encode(jnp.zeros((1, 4, H, W, 3)))
    with pytest.raises(ValueError, match="RGB"):
        vae.encode(jnp.zeros((1, 5, H, W, 4)))
    with pytest.raises(ValueError, match="divisible by 8"):
        vae.encode(jnp.zeros((1, 5, 12, W, 3)))
    with pytest.raises(ValueError, match="latents"):
        vae.decode(jnp.zeros((1, 2, 2, 3, 8)))


def test_bad_checkpoint(ref, tmp_path):
    """Reference: io.fill_module's error contract (one CheckpointError naming the file)."""
    sd = {_original_name(k): v for k, v in ref.state_dict().items()}
    assert "encoder.downsamples.0.residual.0.gamma" in sd and "conv2.weight" in sd
    sd["encoder.extra.weight"] = torch.zeros(3)
    del sd["decoder.head.2.bias"]
    p = tmp_path / "bad.pth"
    torch.save(sd, p)
    with pytest.raises(CheckpointError, match=r"bad\.pth.*missing: decoder\.conv_out\.bias.*unknown: encoder\.extra"):
        convert.load_wan_vae(str(p))
    torch.save({"foo.weight": torch.zeros(2)}, p)
    with pytest.raises(CheckpointError, match="not a Wan VAE"):
        convert.load_wan_vae(str(p))
