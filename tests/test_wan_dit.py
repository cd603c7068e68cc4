"""WanDiT against diffusers' WanTransformer3DModel (PyTorch), both checkpoint layouts."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from shotstream_jax import convert
from shotstream_jax.convert import CheckpointError
from tests.torch_refs import nchw_video, tiny_wan_transformer, to_numpy, to_original_wan_state

B, F, H, W = 2, 3, 8, 12


@pytest.fixture(scope="module")
def torch_model():
    return tiny_wan_transformer()


@pytest.fixture(scope="module")
def ckpt_dirs(tmp_path_factory, torch_model):
    root = tmp_path_factory.mktemp("wan")
    diff = root / "diffusers"
    torch_model.save_pretrained(diff)
    orig = root / "original"
    orig.mkdir()
    torch.save(to_original_wan_state(torch_model), orig / "wan_dit.pth")
    with open(orig / "config.json", "w") as f:  # the original release ships a config.json like this
        json.dump({"model_type": "t2v", "dim": 64, "ffn_dim": 128, "num_heads": 2, "num_layers": 2,
                   "freq_dim": 32, "in_dim": 16, "out_dim": 16, "text_len": 512, "eps": 1e-6}, f)
    return {"diffusers": str(diff), "original": str(orig / "wan_dit.pth")}


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, F, H, W, 16)).astype(np.float32)
    text = rng.standard_normal((B, 16, 32)).astype(np.float32)
    return x, text


def torch_forward(model, x, t, text):
    """t: [B] or [B, F]; diffusers takes per-token timesteps [B, tokens] for the latter."""
    tt = torch.from_numpy(t)
    if t.ndim == 2:
        tt = tt.repeat_interleave((H // 2) * (W // 2), dim=1)
    with torch.no_grad():
        out = model(nchw_video(x), tt, torch.from_numpy(text), return_dict=False)[0]
    return to_numpy(out).transpose(0, 2, 3, 4, 1)


@pytest.mark.parametrize("layout", ["diffusers", "original"])
@pytest.mark.parametrize("per_frame", [False, True])
def test_matches_diffusers(torch_model, ckpt_dirs, inputs, layout, per_frame):
    x, text = inputs
    t = np.array([[999.0, 500.0, 3.0], [250.0, 250.0, 760.0]], np.float32) if per_frame \
        else np.array([731.0, 12.0], np.float32)
    ref = torch_forward(torch_model, x, t, text)
    dit = convert.load_wan_dit(ckpt_dirs[layout])
    out = np.asarray(jax.jit(lambda a, b, c: dit(a, b, c))(x, t, text))
    scale = np.abs(ref).max()
    assert np.abs(out - ref).max() < 1e-4 * scale


def test_bf16_close_to_f32(ckpt_dirs, inputs):
    x, text = inputs
    t = np.array([600.0, 100.0], np.float32)
    f32 = np.asarray(convert.load_wan_dit(ckpt_dirs["diffusers"])(x, t, text))
    bf16 = convert.load_wan_dit(ckpt_dirs["diffusers"], dtype="bfloat16", param_dtype="bfloat16")
    out = np.asarray(bf16(jnp.asarray(x), t, jnp.asarray(text)))
    rel = np.linalg.norm(out - f32) / np.linalg.norm(f32)
    assert rel < 3e-2, rel


def test_sharded_index_and_single_file(tmp_path, torch_model, inputs):
    sd = {k: v.contiguous() for k, v in torch_model.state_dict().items()}
    keys = sorted(sd)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(tmp_path / name))
        weight_map.update({k: name for k in ks})
    with open(tmp_path / "model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    x, text = inputs
    t = np.array([400.0, 400.0], np.float32)
    ref = torch_forward(torch_model, x, t, text)
    for p in (str(tmp_path / "model.safetensors.index.json"), str(tmp_path)):
        out = np.asarray(convert.load_wan_dit(p, num_heads=2)(x, t, text))
        assert np.abs(out - ref).max() < 1e-4 * np.abs(ref).max()


def test_bad_checkpoints(tmp_path, torch_model):
    sd = to_original_wan_state(torch_model)
    broken = dict(sd)
    del broken["blocks.1.self_attn.q.weight"]
    broken["blocks.0.extra.weight"] = torch.zeros(3)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as e:
        convert.load_wan_dit(str(tmp_path / "broken.pth"), num_heads=2)
    msg = str(e.value)
    assert "broken.pth" in msg and "blocks.1.self_attn.q.weight" in msg and "blocks.0.extra.weight" in msg

    wrong = dict(sd)
    wrong["blocks.0.ffn.2.bias"] = torch.zeros(65)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match=r"wrong\.pth.*blocks\.0\.ffn\.2\.bias: \(65,\)"):
        convert.load_wan_dit(str(tmp_path / "wrong.pth"), num_heads=2)

    with pytest.raises(CheckpointError, match="no such file"):
        convert.load_wan_dit(str(tmp_path / "absent.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        convert.load_wan_dit(str(tmp_path / "junk.safetensors"))
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a Wan DiT checkpoint"):
        convert.load_wan_dit(str(tmp_path / "other.safetensors"))


def test_head_count_needed_without_config(tmp_path, torch_model):
    torch.save(to_original_wan_state(torch_model), tmp_path / "noconfig.pth")
    with pytest.raises(CheckpointError, match=r"noconfig\.pth.*config\.json"):
        convert.load_wan_dit(str(tmp_path / "noconfig.pth"))


def test_inference_parameters_bf16_on_accelerators(monkeypatch):
    """Reference: the same model with float32 parameters and bf16 compute (modulation and norm
    weights rounded to bf16 are the only difference); on CPU the model is left as it is."""
    from flax import nnx

    from shotstream_jax.models.inference import for_inference
    from shotstream_jax.models.wan_dit import WanDiT, WanDiTConfig
    cfg = WanDiTConfig.from_size("tiny", text_dim=32, freq_dim=32, text_len=8, dtype="bfloat16",
                                 attention_impl="xla")  # runs on this CPU with the backend reported as GPU
    dit = WanDiT(cfg, rngs=nnx.Rngs(0))
    assert for_inference(dit, remat=False) is dit  # CPU
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 3, 4, 4, 16))
    t, text = jnp.array([500.0]), jax.random.normal(jax.random.PRNGKey(2), (1, 8, 32))
    want = dit(x, t, text)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    fast = for_inference(dit, remat=False)
    assert fast.cfg.param_dtype == "bfloat16"
    assert {p.dtype for p in jax.tree.leaves(nnx.state(fast, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}
    got = fast(x, t, text)
    assert float(jnp.abs(got - want).max() / jnp.abs(want).max()) < 2e-2


def test_fp8_linears_close_to_bf16():
    """Reference: the same weights with bf16 linears; E4M3 (3 mantissa bits) with per-tensor scales
    stays within 10% of the output scale at the max and 2% on average over 2 random blocks."""
    import dataclasses

    from flax import nnx

    from shotstream_jax.models.wan_dit import Fp8Linear, WanDiT, WanDiTConfig
    cfg = WanDiTConfig.from_size("tiny", text_dim=32, freq_dim=32, text_len=8, dtype="bfloat16",
                                 attention_impl="xla")
    dit = WanDiT(cfg, rngs=nnx.Rngs(0))
    graphdef = nnx.split(nnx.eval_shape(lambda: WanDiT(dataclasses.replace(cfg, fp8=True), rngs=nnx.Rngs(0))))[0]
    fp8 = nnx.merge(graphdef, nnx.state(dit))
    assert isinstance(fp8.blocks.ffn.fc1, Fp8Linear) and not isinstance(fp8.head.head, Fp8Linear)
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 3, 8, 8, 16))
    t, text = jnp.array([700.0]), jax.random.normal(jax.random.PRNGKey(2), (1, 8, 32))
    want, got = dit(x, t, text), fp8(x, t, text)
    err = np.abs(np.asarray(got - want)) / float(jnp.abs(want).max())
    assert err.max() < 0.1 and err.mean() < 0.02, (err.max(), err.mean())


def test_quantize_e4m3_by_hand():
    """Reference: the scale max|a| / 448 and E4M3's rounding of 1/448-scaled values, written out."""
    from shotstream_jax.models.wan_dit import quantize_e4m3
    q, s = quantize_e4m3(jnp.array([0.0, 1.0, -2.0, 4.48]))
    assert float(s) == pytest.approx(0.01)
    np.testing.assert_array_equal(np.asarray(q, np.float32), [0.0, 96.0, -192.0, 448.0])


def test_remat_cache_path_equals_carry_path():
    """Reference: the same model without remat (cache in the layer scan's carry). With remat each layer's
    cache slice goes through the scan as xs/ys instead (so the backward keeps one cache, not one per
    layer); outputs, written cache and gradients must not change."""
    import dataclasses
    from flax import nnx
    from shotstream_jax.kernels.attention import MaskSpec
    from shotstream_jax.models.wan_dit import KVCache, WanDiT, WanDiTConfig

    cfg = WanDiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=3, freq_dim=16, text_dim=16, text_len=8,
                       in_channels=4, out_channels=4)
    plain = WanDiT(cfg, rngs=nnx.Rngs(0))
    remat = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: WanDiT(dataclasses.replace(cfg, remat=True),
                                                                  rngs=nnx.Rngs(0)))), nnx.state(plain))
    k0, k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(k0, (1, 1, 4, 4, 4))
    text = jax.random.normal(k1, (1, 8, 16))
    buf = (3, 1, 12, 2, 16)  # layers, B, keys, heads, head dim: 8 earlier keys, this frame's 4 at 8
    cache = KVCache(jax.random.normal(k2, buf), jax.random.normal(k3, buf), jnp.int32(8))
    mask = MaskSpec(kv_len=jnp.array([12], jnp.int32))

    def run(model):
        def loss(state):
            v, c = nnx.merge(nnx.graphdef(model), state)(x, jnp.array([500.0]), text, kv_cache=cache, mask=mask,
                                                          frame_pos=jnp.array([2]))
            return jnp.sum(v ** 2) + jnp.sum(c.k[:, :, 8:] ** 2), (v, c)
        (_, (v, c)), g = jax.value_and_grad(loss, has_aux=True)(nnx.state(model))
        return v, c, g

    v0, c0, g0 = run(plain)
    v1, c1, g1 = run(remat)
    np.testing.assert_allclose(v1, v0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c1.k, c0.k, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c1.v, c0.v, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
