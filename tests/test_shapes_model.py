"""The Shapes model family: the vae training stage and the default-model loader.

References: the reconstruction loss written out in the test on a freshly built WanVAE, latent
statistics recomputed from the exported VAE, the world tokenizer through text.Tokenizer, and a
model directory written in the test for the loader."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from shotstream_jax import ShotStream, default_model, model_dir
from shotstream_jax.config import get_config
from shotstream_jax.data import shapes
from shotstream_jax.models.wan_vae import WanVAE, WanVAEConfig


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """A 2-step vae stage on 16x16 Shapes stories (a narrow VAE), through the ordinary training loop."""
    from shotstream_jax.train import loop
    tmp = tmp_path_factory.mktemp("vae")
    cfg = get_config("shapes", "vae")
    cfg.video.height = cfg.video.width = 16
    cfg.vae.base_dim = 4
    cfg.model.update(dim=32, ffn_dim=64, num_layers=1)   # the export's untrained DiT: small and quick to build
    cfg.train.update(steps=2, checkpoint_every=1, stats_batches=2)
    cfg.data.manifest = shapes.write_dataset(str(tmp / "data"), num_stories=2, seed=5, size=16)
    cfg.text_encoder.tokenizer = str(tmp / "data" / "tokenizer.json")
    loop.train(cfg, str(tmp / "run"), progress=False)
    return cfg, tmp / "run"


@pytest.mark.heavy   # compiles a VAE's gradient: minutes on a shared 2-core CPU
def test_vae_stage_loss_is_the_reconstruction_formula(vae_run):
    """Reference: mean((D(E(x)) - x)^2) + mean|D(E(x)) - x| + penalty mean(E(x)^2) on WanVAE(seed)."""
    from shotstream_jax import sharding
    from shotstream_jax.train import stages
    cfg, workdir = vae_run
    stage = stages.VaeStage(cfg, sharding.make_mesh(cfg.mesh))
    src = stage.source(str(workdir))
    batch = {"video": src[0]["video"][None]}
    vae = WanVAE(WanVAEConfig(**{k: tuple(v) if isinstance(v, tuple) else v for k, v in cfg.vae.to_dict().items()}),
                 rngs=nnx.Rngs(cfg.train.seed))
    got, _ = jax.jit(stage.loss)(nnx.state(vae).to_pure_dict(), batch)
    x = jnp.asarray(batch["video"])
    z = vae.encode(x)
    err = vae.decode(z) - x
    want = jnp.mean(err ** 2) + jnp.mean(jnp.abs(err)) + cfg.train.latent_penalty * jnp.mean(z ** 2)
    assert float(got) == pytest.approx(float(want), rel=1e-4)
    lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
    assert [l["step"] for l in lines] == [1, 2] and all(np.isfinite(l["loss"]) for l in lines)


@pytest.mark.heavy
def test_vae_export_is_a_full_model_directory_with_fitted_latent_stats(vae_run):
    """Reference: mean/std of the exported VAE's latents of the first clips; the world tokenizer; load_pipeline."""
    from shotstream_jax.text import shot_prompt
    from shotstream_jax.train import stages
    cfg, workdir = vae_run
    config, dit, vae, text = model_dir.load_pipeline(str(workdir / "export"))
    src = stages.VideoClipSource(stages.pipeline.manifest.read_manifest(cfg.data.manifest, 1)[0], cfg)
    z = np.concatenate([np.asarray(vae.encode(jnp.asarray(src[i]["video"][None]))).reshape(-1, 16) for i in (0, 1)])
    np.testing.assert_allclose(vae.cfg.latents_mean, z.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(vae.cfg.latents_std, z.std(0), rtol=1e-3, atol=1e-5)
    story = shapes.make_story(5, 0)
    ids, mask = text.tokenize(shot_prompt(story.global_caption, 1, story.shots[1].caption))
    assert 2 not in ids[mask > 0]                     # no <unk>: every word is in the vocabulary
    assert text.encode("wide shot of a red circle standing still on a blue background").shape == (1, 32, 64)
    assert (config.video.height, config.shotstream.shot_latent_frames, dit.cfg.text_dim) == (16, 9, 64)


def test_default_model_is_the_shipped_directory_when_present(tmp_path, monkeypatch):
    """Reference: a model directory written here; without one the toy model of default_model.build()."""
    monkeypatch.setattr(default_model, "SHIPPED", str(tmp_path / "none"))
    toy = default_model.build()
    monkeypatch.setattr(default_model, "build", lambda **kw: toy)
    assert default_model.load() is toy
    config, dit, vae, text = toy
    config.video.height = config.video.width = 64    # marks the directory's own config
    model_dir.save(str(tmp_path / "shipped"), dit, vae=vae, text_model=text.model, tokenizer="bytes", config=config)
    monkeypatch.setattr(default_model, "SHIPPED", str(tmp_path / "shipped"))
    pipe = ShotStream.load()
    assert (pipe.height, pipe.width, pipe.fps) == (64, 64, 16)
