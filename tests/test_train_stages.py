"""Every training stage runs a few steps on the toy config from generated videos on disk (reference: the recipe in DESIGN.md 5/8)."""
import json
import os

import numpy as np
import pytest

from shotstream_jax.config import get_config
from shotstream_jax.data import pipeline
from shotstream_jax.train import loop, stages
from tests.conftest import run_python


def small(stage, **train):
    """Toy config with 2-chunk shots (21 pixel frames -> 6 latent frames) so each stage compiles fast."""
    cfg = get_config("toy", stage)
    cfg.video.shot_frames, cfg.shotstream.shot_latent_frames = 21, 6
    cfg.data.toy_videos, cfg.train.ode_steps, cfg.train.critic_steps = 3, 4, 1
    for k, v in train.items():
        cfg.train[k] = v
    return cfg


def metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_cli_teacher_out_of_the_box(tmp_path):
    """The documented command: toy data made in DIR, metrics.jsonl per step, export/ model dir."""
    w = tmp_path / "run"
    r = run_python("-m", "shotstream_jax.cli.train", "--config=configs/toy/teacher.py", f"--workdir={w}",
                   "--config.train.steps=2", "--config.train.batch_size=2", "--progress=false",
                   "--config.video.shot_frames=21", "--config.shotstream.shot_latent_frames=6")
    assert r.returncode == 0, r.stderr[-3000:]
    m = metrics(w)
    assert [x["step"] for x in m] == [1, 2] and all(np.isfinite(x["loss"]) for x in m)
    assert (w / "toy_data" / "manifest.csv").exists() and (w / "export" / "config.json").exists()
    assert any(f.startswith("events") for f in os.listdir(w / "tensorboard"))
    h = run_python("-m", "shotstream_jax.cli.train", "--help")
    assert "ode_pairs" in h.stdout and "--workdir" in h.stdout


def test_cli_reports_a_bad_mesh_cleanly(tmp_path):
    r = run_python("-m", "shotstream_jax.cli.train", "--config=configs/toy/teacher.py", f"--workdir={tmp_path}",
                   "--config.mesh.fsdp=3")
    assert r.returncode == 1 and "mesh" in r.stderr and "Traceback" not in r.stderr


def test_ode_pairs_then_ode_init(tmp_path):
    cfg = small("ode_init", steps=2, ode_examples=2)   # pairs for the first 2 examples only
    m = loop.train(cfg, str(tmp_path), progress=False)
    assert m["step"] == 2 and np.isfinite(m["ode_loss"])
    files = sorted(f for f in os.listdir(tmp_path / "ode_pairs") if f.endswith(".npz"))
    assert files == ["000000.npz", "000001.npz"] and len(pipeline.source(cfg, str(tmp_path))) > 2
    z = np.load(tmp_path / "ode_pairs" / files[0])
    assert z["ode"].shape == (4, 6, 4, 4, 16) and z["target"].shape == (6, 4, 4, 16)


def test_dmd_intra_alternates_generator_and_critic(tmp_path):
    m = loop.train(small("dmd_intra", steps=2), str(tmp_path), progress=False)
    lines = metrics(tmp_path)
    assert [x["is_generator_step"] for x in lines] == [1, 0]
    assert np.isfinite(lines[0]["generator_loss"]) and np.isfinite(lines[1]["critic_loss"])
    assert m["step"] == 2



def test_lr_schedules_follow_their_formulas():
    """Reference: the schedules written out: linear warmup then constant; warmup then a cosine from
    lr down to lr/10 at train.steps (and held there)."""
    cfg = get_config("toy", "teacher")
    cfg.train.update(warmup_steps=10, steps=110)
    lr = 1e-3
    warm = stages.lr_schedule(cfg, lr)
    for s in (0, 5, 10, 50, 500):
        assert float(warm(s)) == pytest.approx(lr * min(s, 10) / 10)
    cfg.train.lr_decay = "cosine"
    cos = stages.lr_schedule(cfg, lr)
    for s in (0, 5, 10, 35, 60, 110, 300):
        p = min(max(s - 10, 0), 100) / 100
        want = lr * s / 10 if s < 10 else 0.1 * lr + 0.5 * 0.9 * lr * (1 + np.cos(np.pi * p))
        assert float(cos(s)) == pytest.approx(want, rel=1e-5)
    cfg.train.update(warmup_steps=0, lr_decay="none")
    assert stages.lr_schedule(cfg, lr) == lr
    cfg.train.lr_decay = "linear"
    with pytest.raises(ValueError, match="lr_decay must be 'none' or 'cosine'"):
        stages.lr_schedule(cfg, lr)


def test_uncond_text_is_the_negative_prompt_or_zeros():
    """Reference: the toy text encoder's embedding of the reference negative prompt (the default), the
    all-zero embedding that text dropout trains (the Shapes world's choice), and a clear error otherwise."""
    from shotstream_jax.data import pipeline
    cfg = get_config("toy", "dmd_intra")
    _, encode_text = pipeline.encoders(cfg)
    np.testing.assert_array_equal(np.asarray(stages.negative_embedding(cfg)),
                                  encode_text([pipeline.NEGATIVE_PROMPT])[0])
    assert get_config("shapes", "dmd_intra").train.uncond_text == "zeros"
    cfg.train.uncond_text = "zeros"
    z = np.asarray(stages.negative_embedding(cfg))
    assert z.shape == (cfg.model.text_len, cfg.model.text_dim) and not z.any()
    cfg.train.uncond_text = "empty"
    with pytest.raises(ValueError, match="uncond_text must be 'negative_prompt' or 'zeros'"):
        stages.negative_embedding(cfg)


def test_model_dir_of_another_architecture_is_refused(tmp_path):
    """A DiT saved with other heads restores into the config's shapes without complaint (num_heads changes
    no parameter shape), so dit_params must compare the saved architecture; runtime fields may differ."""
    import dataclasses

    import jax
    from flax import nnx

    from shotstream_jax import model_dir, sharding
    from shotstream_jax.models.wan_dit import WanDiT
    cfg = get_config("toy", "teacher")
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    base = stages.dit_config(cfg)
    model_dir.save(str(tmp_path / "other"), WanDiT(dataclasses.replace(base, num_heads=base.num_heads * 2),
                                                   rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"other: its DiT is not the config's model section: num_heads 4 there, 2"):
        stages.dit_params(cfg, mesh, str(tmp_path / "other"), 0)
    dit = WanDiT(dataclasses.replace(base, remat=True, attention_impl="xla"), rngs=nnx.Rngs(1))
    model_dir.save(str(tmp_path / "same"), dit)
    got = stages.dit_params(cfg, mesh, str(tmp_path / "same"), 0)
    want = nnx.state(dit, nnx.Param).to_pure_dict()
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
