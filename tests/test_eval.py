"""Pixel metrics and transition control against hand-made videos (hard cuts, static shots, noise)
with known answers, and shotstream-eval --testset end to end on a reference-format test set."""
import json

import numpy as np
import pytest

from shotstream_jax.eval import cuts
from shotstream_jax.eval import pixel as evaluation
from tests.conftest import default_video, run_python


def _shots(colours, n=9, size=32):
    rng = np.random.default_rng(0)
    out = []
    for c in colours:
        base = np.full((size, size, 3), c, np.uint8)
        base[::4] = 255 - c  # some structure so that correlations are defined
        out.append(np.stack([np.clip(base.astype(int) + rng.integers(-3, 4, base.shape), 0, 255)
                             for _ in range(n)]).astype(np.uint8))
    return np.concatenate(out)


def test_cut_detector_finds_hard_cuts():
    video = _shots([20, 200, 90])
    assert cuts.transition_control(video, [9, 9, 9]) == 1.0
    # the same video split at the wrong places: the cuts are not where the story says
    assert cuts.transition_control(video, [4, 10, 13]) == 0.0


def test_consistency_scores():
    video = _shots([20, 200])
    m = evaluation.video_metrics(video, [9, 9])
    assert m["intra_shot_consistency"] > 0.9
    noise = np.random.default_rng(1).integers(0, 256, (18, 32, 32, 3), dtype=np.uint8)
    assert abs(evaluation.video_metrics(noise, [9, 9])["intra_shot_consistency"]) < 0.1
    with pytest.raises(ValueError, match="do not add up"):
        evaluation.video_metrics(video, [9, 8])


def test_eval_cli_on_reference_testset(tmp_path):
    story = {"global_caption": "A story about one character.",
             "shot1": "wide shot of a red circle moving right on a blue background",
             "shot2": "close-up of the same character standing still on a yellow background"}
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "01.json").write_text(json.dumps(story))
    (tmp_path / "testset.csv").write_text(
        'shot_num_from_caption,json_path,frame_number\n2,json/01.json,"[[0, 81], [81, 162]]"\n')
    out = tmp_path / "out"
    r = run_python("-m", "shotstream_jax.cli.eval", f"--testset={tmp_path / 'testset.csv'}",
                   f"--out_dir={out}", "--noprogress")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "metrics.json").read_text())
    s = report["stories"]["01"]
    assert s["frames"] == 2 * default_video()[0] and s["shots"] == 2 and s["fps"] > 0 and s["first_frame_latency_s"] > 0
    assert 0.0 <= s["transition_control"] <= 1.0
    assert set(report["mean"]) >= {"fps", "transition_control", "intra_shot_consistency"}
    assert (out / "01.mp4").exists()

    r = run_python("-m", "shotstream_jax.cli.eval", f"--testset={tmp_path / 'missing.csv'}")
    assert r.returncode != 0 and "missing.csv" in r.stderr and "Traceback" not in r.stderr
