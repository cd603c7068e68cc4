"""Resume and overfitting of the teacher stage (reference: an uninterrupted run; the loss at the start)."""
import json
import os

import numpy as np

from shotstream_jax.train import loop
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


def test_tiny_teacher_overfits_a_handful_of_clips(tmp_path):
    cfg = small("teacher", steps=60, batch_size=2, lr=3e-3, trainable="all", context_dropout=0.0,
                text_dropout=0.0, checkpoint_every=1000)
    cfg.data.toy_videos = 2
    loop.train(cfg, str(tmp_path), progress=False)
    curve = [losses(tmp_path)[s] for s in range(1, 61)]
    start, end = np.mean(curve[:10]), np.mean(curve[-10:])
    assert end < 0.4 * start, (start, end)
