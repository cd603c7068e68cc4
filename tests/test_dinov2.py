"""DINOv2 against transformers' Dinov2Model (a tiny random model built here), f32, at the
native size and at other sizes (bicubic position-embedding resampling); and the converter's
one clear error for a mis-shaped or missing tensor."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import Dinov2Config, Dinov2Model

from shotstream_jax.convert.dinov2 import load_dinov2
from shotstream_jax.convert.io import CheckpointError


def _tiny_dinov2(tmp_path):
    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                       image_size=28, patch_size=7, layerscale_value=0.5)
    model = Dinov2Model(cfg).eval()
    with torch.no_grad():  # position table, LayerScale and norms off their constant inits
        model.embeddings.position_embeddings.normal_()
        for n, p in model.named_parameters():
            if "norm" in n or "lambda" in n:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "dinov2")
    return model, tmp_path / "dinov2"


@pytest.mark.parametrize("size", [(28, 28), (42, 21)])
def test_dinov2_matches_transformers(tmp_path, size):
    model, path = _tiny_dinov2(tmp_path)
    ours = load_dinov2(str(path))
    images = np.random.default_rng(0).standard_normal((2, *size, 3)).astype(np.float32)
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
    out = jax.jit(lambda m, x: m(x))(ours, jnp.asarray(images))
    np.testing.assert_allclose(np.asarray(out), ref.last_hidden_state.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours.embed(jnp.asarray(images))), ref.pooler_output.numpy(),
                               rtol=1e-5, atol=1e-5)


def test_dinov2_checkpoint_errors_name_the_file(tmp_path):
    _, path = _tiny_dinov2(tmp_path)
    f = path / "model.safetensors"
    sd = load_file(f)
    sd["encoder.layer.1.layer_scale2.lambda1"] = np.ones(31, np.float32)
    sd.pop("layernorm.bias")
    save_file(sd, f)
    with pytest.raises(CheckpointError) as e:
        load_dinov2(str(path))
    msg = str(e.value)
    assert msg.startswith(str(f)) and "1 missing: norm.bias" in msg
    assert "encoder.layers.1.ls2.scale: checkpoint (31,) vs model (32,)" in msg
