"""Resume and overfitting of the teacher stage (reference: an uninterrupted run; the loss at the start)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from shotstream_jax import sharding
from shotstream_jax.data import pipeline
from shotstream_jax.models import teacher
from shotstream_jax.train import loop, stages
from tests.conftest import REPO
from tests.test_train_stages import small


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {m["step"]: m["loss"] for m in map(json.loads, f)}


def test_killed_run_resumes_with_the_same_losses(tmp_path):
    """SIGKILL a CLI run once step 3 is logged, run the same command again: every step's loss equals
    an uninterrupted run's (wherever the kill landed relative to the asynchronous checkpoints)."""
    full, part = tmp_path / "full", tmp_path / "part"
    loop.train(small("teacher", steps=6, batch_size=2, checkpoint_every=2), str(full), progress=False)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "shotstream_jax.cli.train", "--config=configs/toy/teacher.py",
           f"--workdir={part}", "--progress=false", "--config.train.steps=6", "--config.train.batch_size=2",
           "--config.train.checkpoint_every=2", "--config.video.shot_frames=21",
           "--config.shotstream.shot_latent_frames=6", "--config.data.toy_videos=3"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(part / "metrics.jsonl") and len(losses(part)) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = losses(full), losses(part)
    assert sorted(b) == list(range(1, 7))
    np.testing.assert_allclose([b[k] for k in range(1, 7)], [a[k] for k in range(1, 7)], rtol=1e-5)


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


# The longest CPU test (about 100 s): CI runs it with the heavy tests to keep the default suite short.
@pytest.mark.heavy
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


@pytest.mark.heavy
def test_resumes_a_checkpoint_with_one_json_iterator_state(tmp_path):
    """Checkpoints written before per-process iterator files keep the data position as one JSON item
    (orbax's JsonSave: data/metadata). Reference: the same checkpoint in today's format, resumed the
    same way. The resumed run must give the same losses and save its own checkpoints afterwards."""
    cfg = small("teacher", steps=4, batch_size=2, checkpoint_every=2)
    loop.train(cfg, str(tmp_path / "full"), progress=False)
    for name in ("now", "old"):
        shutil.copytree(tmp_path / "full", tmp_path / name)
        shutil.rmtree(tmp_path / name / "checkpoints" / "4")
    data = tmp_path / "old" / "checkpoints" / "2" / "data"
    (mine,) = data.glob("process_*.json")
    (data / "metadata").write_text(mine.read_text())
    mine.unlink()
    for name in ("now", "old"):
        loop.train(small("teacher", steps=4, batch_size=2, checkpoint_every=2), str(tmp_path / name), progress=False)
    assert (tmp_path / "old" / "checkpoints" / "4" / "data" / "process_0-of-1.json").exists()
    a, b = losses(tmp_path / "now"), losses(tmp_path / "old")
    np.testing.assert_allclose([b[k] for k in range(1, 5)], [a[k] for k in range(1, 5)], rtol=1e-5)
