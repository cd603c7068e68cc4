"""UMT5Encoder against transformers' UMT5EncoderModel (tiny random model), in both checkpoint layouts."""
import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from shotstream_jax import convert
from shotstream_jax.convert import CheckpointError
from shotstream_jax.models.umt5 import UMT5Config, UMT5Encoder, relative_position_bucket

import transformers  # noqa: E402  (test extra)

L = 40  # past the 8 exact buckets per direction, into the logarithmic ones


@pytest.fixture(scope="module")
def ref():
    torch.manual_seed(0)
    cfg = transformers.UMT5Config(vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                                  relative_attention_num_buckets=32, relative_attention_max_distance=128,
                                  feed_forward_proj="gated-gelu", dropout_rate=0.0)
    m = transformers.UMT5EncoderModel(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "layer_norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return m


def _original_name(key: str) -> str:
    """transformers UMT5EncoderModel key -> original Wan `T5Encoder` key (written from wan/modules/t5.py)."""
    for pat, rep in [
        (r"^shared\.weight$", "token_embedding.weight"),
        (r"^encoder\.block\.(\d+)\.layer\.0\.layer_norm\.", r"blocks.\1.norm1."),
        (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.",
         r"blocks.\1.pos_embedding.embedding."),
        (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.", r"blocks.\1.attn."),
        (r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm\.", r"blocks.\1.norm2."),
        (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0\.", r"blocks.\1.ffn.gate.0."),
        (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1\.", r"blocks.\1.ffn.fc1."),
        (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo\.", r"blocks.\1.ffn.fc2."),
        (r"^encoder\.final_layer_norm\.", "norm."),
    ]:
        key, n = re.subn(pat, rep, key)
        if n:
            return key
    raise AssertionError(f"unmapped key {key}")


def _original_state_dict(ref):
    return {_original_name(k): v for k, v in ref.state_dict().items() if k != "encoder.embed_tokens.weight"}


@pytest.fixture(scope="module", params=["transformers", "original"])
def t5(request, ref, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    if request.param == "transformers":
        ref.save_pretrained(d)
        return convert.load_umt5(str(d))
    torch.save(_original_state_dict(ref), d / "models_t5_umt5-xxl-enc-bf16.pth")
    return convert.load_umt5(str(d / "models_t5_umt5-xxl-enc-bf16.pth"))


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 128, (2, L)).astype(np.int32)
    mask = np.zeros((2, L), np.int32)
    mask[0, :L] = 1
    mask[1, :13] = 1
    ids[mask == 0] = 0
    return ids, mask


def test_matches_transformers(t5, ref):
    """Reference: UMT5EncoderModel(input_ids, attention_mask).last_hidden_state (valid positions)."""
    ids, mask = _batch()
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(ids).long(),
                   attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
    got = np.asarray(t5(jnp.asarray(ids), jnp.asarray(mask)))
    assert got.shape == (2, L, 32)
    valid = mask.astype(bool)
    err = np.abs(got[valid] - want[valid]).max() / np.abs(want[valid]).max()
    assert err < 1e-5, err


def test_buckets_match_transformers(ref):
    """Reference: UMT5Attention._relative_position_bucket."""
    attn = ref.encoder.block[0].layer[0].SelfAttention
    rel = np.arange(-300, 300)
    want = attn._relative_position_bucket(torch.from_numpy(rel)).numpy()
    np.testing.assert_array_equal(relative_position_bucket(jnp.asarray(rel), 32, 128), want)


def test_bfloat16_close_to_float32(ref, tmp_path, monkeypatch):
    """Reference: our float32 encoder from the same checkpoint; the bf16 one is what generation
    runs on accelerators (`for_inference`: bf16 parameters and matmuls)."""
    import jax
    from flax import nnx

    from shotstream_jax.models.inference import for_inference
    ref.save_pretrained(tmp_path)
    f32 = convert.load_umt5(str(tmp_path))
    assert for_inference(f32, "bfloat16") is f32  # on CPU: float32, as configured
    with monkeypatch.context() as m:
        m.setattr(jax, "default_backend", lambda: "gpu")
        bf16 = for_inference(f32, "bfloat16")
    assert (bf16.cfg.dtype, bf16.cfg.param_dtype) == ("bfloat16", "bfloat16")
    assert {p.dtype for p in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}
    ids, mask = _batch()
    a = np.asarray(f32(jnp.asarray(ids), jnp.asarray(mask)))
    b = np.asarray(bf16(jnp.asarray(ids), jnp.asarray(mask)), np.float32)
    assert np.abs(a - b).max() / np.abs(a).max() < 5e-2


def test_bad_checkpoint(ref, tmp_path):
    """Reference: io.fill_module's error contract (one CheckpointError naming the file)."""
    sd = _original_state_dict(ref)
    sd["blocks.0.attn.extra.weight"] = torch.zeros(2, 2)
    del sd["blocks.1.ffn.fc2.weight"]
    p = tmp_path / "bad.pth"
    torch.save(sd, p)
    with pytest.raises(CheckpointError, match=r"bad\.pth.*missing: blocks\.1\.ffn\.wo\.kernel.*unknown"):
        convert.load_umt5(str(p))
    torch.save({"x.weight": torch.zeros(2)}, p)
    with pytest.raises(CheckpointError, match="not a umT5"):
        convert.load_umt5(str(p))


def test_rejects_bad_ids():
    """Reference: the documented input contract int32[B, L]."""
    from flax import nnx
    m = UMT5Encoder(UMT5Config.from_size("tiny"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="input_ids"):
        m(jnp.zeros((5,), jnp.int32))
