"""Resume and overfitting of the teacher stage (reference: an uninterrupted run; the loss at the start)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shotstream_jax import sharding
from shotstream_jax.data import pipeline
from shotstream_jax.models import teacher
from shotstream_jax.train import loop, stages
from tests.test_train_stages import small


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {m["step"]: m["loss"] for m in map(json.loads, f)}


def test_resume_gives_the_same_losses(tmp_path):
    """Stop after step 2 (steps=2), resume to 4: the losses of steps 3-4 match an uninterrupted run."""
    full, part = tmp_path / "full", tmp_path / "part"
    loop.train(small("teacher", steps=4, batch_size=2), str(full), progress=False)
    loop.train(small("teacher", steps=2, batch_size=2), str(part), progress=False)
    first = losses(part)
    loop.train(small("teacher", steps=4, batch_size=2), str(part), progress=False)
    a, b = losses(full), losses(part)
    assert sorted(b) == [1, 2, 3, 4] and first == {k: b[k] for k in (1, 2)}
    np.testing.assert_allclose([b[3], b[4]], [a[3], a[4]], rtol=1e-6)


def _fixed_eval_loss(cfg, params, batch):
    """Unweighted teacher flow-matching loss on `batch` at 8 fixed (t, noise) draws (models/teacher.py)."""
    net = stages.Net(cfg, "all")
    dit = nnx.merge(net.full_graphdef, params)
    ex_all = {k: jnp.asarray(v) for k, v in batch.items()}
    tf = cfg.shotstream.shot_latent_frames

    def one(ex, key):
        fc = ex["context"].shape[0]
        loss, _ = teacher.teacher_loss(
            dit, key, ex["context"][None], ex["target"][None], stages._text_slots(ex)[None],
            frame_prompt=stages._frame_prompt(fc, tf), frame_pos=np.arange(fc + tf),
            frame_shot=stages._rope_shots(ex["context_shot"], tf), weighted=False)
        return loss

    keys = jax.random.split(jax.random.PRNGKey(123), 8)
    return float(jnp.mean(jax.vmap(lambda k: jax.vmap(one, (0, None))(ex_all, k))(keys)))


def test_tiny_teacher_overfits_a_handful_of_clips(tmp_path):
    """Two clips, 150 steps: the loss at fixed (t, noise) falls well below that of the initial network."""
    cfg = small("teacher", steps=150, batch_size=2, lr=1e-2, b1=0.9, trainable="all", context_dropout=0.0,
                text_dropout=0.0, checkpoint_every=1000)
    cfg.data.toy_videos = 2
    loop.train(cfg, str(tmp_path), progress=False)
    curve = [losses(tmp_path)[s] for s in range(1, 151)]
    assert np.mean(curve[-20:]) < np.mean(curve[:20])
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    batch = next(iter(pipeline.dataset(pipeline.source(cfg, str(tmp_path)), 2, seed=0)))
    before = _fixed_eval_loss(cfg, stages.dit_params(cfg, mesh, "", cfg.train.seed), batch)
    after = _fixed_eval_loss(cfg, stages.dit_params(cfg, mesh, str(tmp_path / "export"), 0), batch)
    assert after < 0.3 * before, (before, after)
