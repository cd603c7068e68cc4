"""shotstream-convert: orbax round trip is bit-identical to the PyTorch weights it read; errors are clean."""
import os
import jax
import numpy as np
import pytest
from flax import nnx

from shotstream_jax import convert, model_dir
from tests.conftest import run_python
from tests.torch_refs import tiny_wan_transformer


def _run(*args):
    return run_python("-m", "shotstream_jax.cli.convert", *args)


@pytest.fixture(scope="module")
def diffusers_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("src") / "transformer"
    tiny_wan_transformer(seed=1).save_pretrained(d)
    return str(d)


def test_round_trip_bit_identical(tmp_path, diffusers_dir):
    out = tmp_path / "model"
    r = _run(f"--src={diffusers_dir}", f"--out={out}")
    assert r.returncode == 0, r.stderr
    loaded = model_dir.load_dit(str(out))
    direct = convert.load_wan_dit(diffusers_dir)
    a, b = nnx.state(loaded).to_pure_dict(), nnx.state(direct).to_pure_dict()
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
    # and the PyTorch tensors themselves, for one weight of each kind
    from safetensors.numpy import load_file
    src = load_file(os.path.join(diffusers_dir, "diffusion_pytorch_model.safetensors"))
    np.testing.assert_array_equal(np.asarray(loaded.blocks.self_attn.q.kernel[...])[1],
                                  src["blocks.1.attn1.to_q.weight"].T)
    np.testing.assert_array_equal(np.asarray(loaded.head.modulation[...]), src["scale_shift_table"][0])


def test_bad_source_leaves_no_output(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    out = tmp_path / "model"
    r = _run(f"--src={bad}", f"--out={out}")
    assert r.returncode != 0
    assert "bad.safetensors" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_refuses_to_overwrite(tmp_path, diffusers_dir):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = _run(f"--src={diffusers_dir}", f"--out={out}")
    assert r.returncode != 0 and "--overwrite" in r.stderr
    assert (out / "keep.txt").exists()


def test_full_generation_model(tmp_path, diffusers_dir):
    """DiT (diffusers layout) + VAE (diffusers AutoencoderKLWan) + umT5 (transformers + tokenizer.json):
    converted, loaded by ShotStream.load, and a shot generated from it; the VAE inside equals
    convert.load_wan_vae of the same file."""
    from shotstream_jax import ShotStream
    from tests.torch_refs import tiny_umt5_dir, tiny_wan_vae
    vae_dir = tmp_path / "vae"
    tiny_wan_vae().save_pretrained(vae_dir)
    t5_dir = tiny_umt5_dir(tmp_path / "umt5")
    out = tmp_path / "model"
    r = _run(f"--src={diffusers_dir}", f"--vae={vae_dir}", f"--umt5={t5_dir}", f"--out={out}",
             "--config=configs/toy/generate.py")
    assert r.returncode == 0, r.stderr
    pipe = ShotStream.load(str(out))
    direct = convert.load_wan_vae(str(vae_dir))
    for x, y in zip(jax.tree.leaves(nnx.state(pipe.vae)), jax.tree.leaves(nnx.state(direct))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    frames = np.concatenate(list(pipe.session("the city at night", seed=0).next_shot("rain")))
    assert frames.shape == (81, 32, 32, 3) and frames.dtype == np.uint8

    r = _run(f"--src={diffusers_dir}", f"--vae={vae_dir}", f"--out={tmp_path / 'x'}")
    assert r.returncode != 0 and "both --vae and --umt5" in r.stderr
