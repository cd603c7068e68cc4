"""CLIP towers against transformers' CLIPModel (a tiny random model built here), f32; and the
converter's one clear error for a checkpoint with a missing or mis-shaped tensor."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import CLIPConfig as HFCLIPConfig
from transformers import CLIPModel

from shotstream_jax.convert.clip import load_clip
from shotstream_jax.convert.io import CheckpointError


def _tiny_clip(tmp_path, eos_token_id=99):
    torch.manual_seed(0)
    cfg = HFCLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, eos_token_id=eos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                           image_size=28, patch_size=7),
        projection_dim=24)
    model = CLIPModel(cfg).eval()
    with torch.no_grad():  # move LayerNorms off their (1, 0) init so that the test sees them
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "clip")
    return model, tmp_path / "clip"


@pytest.mark.parametrize("eos_token_id", [99, 2])  # current configs; pre-2023 configs pool at argmax(ids)
def test_clip_towers_match_transformers(tmp_path, eos_token_id):
    model, path = _tiny_clip(tmp_path, eos_token_id)
    ours = load_clip(str(path))
    rng = np.random.default_rng(0)
    images = rng.standard_normal((3, 28, 28, 3)).astype(np.float32)
    ids = rng.integers(3, 98, (3, 16))
    for row, n in zip(ids, (5, 9, 16)):
        row[n - 1] = 99                      # end-of-text token, then padding
        row[n:] = 0
    with torch.no_grad():
        ref_img = model.get_image_features(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
        ref_txt = model.get_text_features(input_ids=torch.from_numpy(ids))
    ref_img = getattr(ref_img, "pooler_output", ref_img).numpy()
    ref_txt = getattr(ref_txt, "pooler_output", ref_txt).numpy()
    img = jax.jit(lambda m, x: m.encode_image(x))(ours, jnp.asarray(images))
    txt = jax.jit(lambda m, x: m.encode_text(x))(ours, jnp.asarray(ids, jnp.int32))
    np.testing.assert_allclose(np.asarray(img), ref_img, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(txt), ref_txt, rtol=1e-5, atol=1e-5)


def test_clip_checkpoint_errors_name_the_file(tmp_path):
    _, path = _tiny_clip(tmp_path)
    f = path / "model.safetensors"
    sd = load_file(f)
    sd.pop("vision_model.encoder.layers.1.mlp.fc2.bias")
    sd["text_model.encoder.layers.0.self_attn.q_proj.weight"] = np.zeros((32, 31), np.float32)
    save_file(sd, f)
    with pytest.raises(CheckpointError) as e:
        load_clip(str(path))
    msg = str(e.value)
    assert msg.startswith(str(f)) and "1 missing: vision.encoder.layers.1.mlp.fc2.bias" in msg
    assert "text.encoder.layers.0.attn.q.kernel: checkpoint (31, 32) vs model (32, 32)" in msg

    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_clip(str(path))
    (path / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    with pytest.raises(CheckpointError, match="not 'clip'"):
        load_clip(str(path))
