"""Table 1 metrics against answers worked out by hand (formulas written out here), the aesthetic
head against a PyTorch nn.Sequential, and the optical flow against an exactly translated pattern."""
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from shotstream_jax.convert.aesthetic import load_aesthetic_head
from shotstream_jax.convert.io import CheckpointError
from shotstream_jax.eval import cuts, flow, table1


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_identical_frames_give_consistency_one():
    f = np.repeat(_unit(np.random.default_rng(0).standard_normal((1, 8))), 6, axis=0)
    assert table1.consistency(f) == pytest.approx(1.0)
    assert table1.intra_shot(f, [3, 3])[0] == pytest.approx(1.0)
    assert table1.inter_shot_keyframes(f, [2, 4]) == pytest.approx(1.0)
    assert table1.inter_shot_semantic(f, [2, 4]) == pytest.approx(1.0)


def test_consistency_formula_and_shuffled_story():
    # VBench: mean over i >= 1 of (max(0, cos(f_i, f_{i-1})) + max(0, cos(f_i, f_0))) / 2
    e = np.eye(3)
    f = np.stack([e[0], _unit(e[0] + e[1]), -e[0]])
    c = np.sqrt(0.5)
    assert table1.consistency(f) == pytest.approx(((c + c) / 2 + (0 + 0) / 2) / 2)
    # a story of three shots, each a slow drift around its own direction; shuffling frames
    # across shots must lower intra-shot consistency
    rng = np.random.default_rng(1)
    centres = _unit(rng.standard_normal((3, 16)))
    frames = _unit(np.concatenate([c + 0.05 * np.cumsum(rng.standard_normal((8, 16)), 0) for c in centres]))
    ordered = table1.intra_shot(frames, [8, 8, 8])[0]
    shuffled = table1.intra_shot(frames[rng.permutation(24)], [8, 8, 8])[0]
    assert ordered > 0.9 and shuffled < ordered - 0.2


def test_text_alignment_pairs_each_shot_with_its_caption():
    e = np.eye(4)
    images = np.stack([e[0], e[0], e[1], _unit(e[1] + e[2])])
    texts = np.stack([e[0], e[1]])
    score, per_shot = table1.text_alignment(images, texts, [2, 2])
    assert per_shot == pytest.approx([1.0, (1 + np.sqrt(0.5)) / 2])
    assert score == pytest.approx(np.mean(per_shot))
    assert table1.text_alignment(images, texts[::-1], [2, 2])[0] < score  # captions swapped


def test_transition_control_is_f1_of_matched_cuts():
    assert cuts.match([10, 20], [10, 21], tol=2) == (2, 0, 0)
    assert cuts.f1(*cuts.match([10, 20], [10, 21], tol=2)) == 1.0
    assert cuts.f1(*cuts.match([10], [10, 20], tol=2)) == pytest.approx(2 / 3)          # one missed
    assert cuts.f1(*cuts.match([10, 15, 20], [10, 20], tol=2)) == pytest.approx(0.8)    # one extra
    assert cuts.f1(*cuts.match([], [], tol=2)) == 1.0 and cuts.f1(*cuts.match([5], [], tol=2)) == 0.0
    assert cuts.match([10, 11], [10], tol=2) == (1, 1, 0)  # one detection per boundary


def test_aesthetic_head_formats(tmp_path):
    # improved-aesthetic-predictor: Linear layers with dropout between them (indices 0, 2, 4, 6, 7)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.Dropout(0.2), torch.nn.Linear(10, 6),
                              torch.nn.Dropout(0.2), torch.nn.Linear(6, 5), torch.nn.Dropout(0.1),
                              torch.nn.Linear(5, 3), torch.nn.Linear(3, 1)).eval()
    torch.save({"layers." + k: v for k, v in mlp.state_dict().items()}, tmp_path / "mlp.pth")
    x = _unit(np.random.default_rng(0).standard_normal((4, 12))).astype(np.float32)
    w, b = load_aesthetic_head(str(tmp_path / "mlp.pth"))
    with torch.no_grad():
        ref = mlp(torch.from_numpy(x))[:, 0].numpy()
    np.testing.assert_allclose(x @ w + b, ref, rtol=1e-5, atol=1e-5)
    # the LAION linear head, as .pth, .safetensors and .npz
    lin = torch.nn.Linear(12, 1)
    torch.save(lin.state_dict(), tmp_path / "head.pth")
    sd = {k: v.detach().numpy() for k, v in lin.state_dict().items()}
    save_file(sd, tmp_path / "head.safetensors")
    np.savez(tmp_path / "head.npz", **sd)
    with torch.no_grad():
        ref = lin(torch.from_numpy(x))[:, 0].numpy()
    for name in ("head.pth", "head.safetensors", "head.npz"):
        w, b = load_aesthetic_head(str(tmp_path / name))
        np.testing.assert_allclose(x @ w + b, ref, rtol=1e-5, atol=1e-6)
    np.savez(tmp_path / "bad.npz", weight=sd["weight"])
    with pytest.raises(CheckpointError, match="bad.npz.*not an aesthetic-predictor head"):
        load_aesthetic_head(str(tmp_path / "bad.npz"))


def _smooth_pattern(dx, dy, h=64, w=96):
    """A band-limited random image translated by (dx, dy) exactly (Fourier shift)."""
    rng = np.random.default_rng(0)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    spec = np.fft.fft2(rng.standard_normal((h, w))) * np.exp(-(fx ** 2 + fy ** 2) / (2 * 0.05 ** 2))
    img = np.real(np.fft.ifft2(spec * np.exp(-2j * np.pi * (fx * dx + fy * dy))))
    return (0.5 + img / (2.5 * np.abs(img).max())).astype(np.float32)


def test_optical_flow_recovers_a_known_translation():
    # reference: the pattern moved by a known sub-pixel (dx, dy); interior pixels, away from the wrap-around
    for d in [(2.5, -1.25), (-6.0, 4.5)]:
        f = np.asarray(flow.optical_flow(_smooth_pattern(0, 0), _smooth_pattern(*d)))[12:-12, 12:-12]
        np.testing.assert_allclose(np.median(f.reshape(-1, 2), axis=0), d, atol=0.1)
        assert np.mean(np.linalg.norm(f - np.array(d), axis=-1) < 0.25) > 0.9


def test_dynamic_degree_rule():
    # VBench: dynamic when at least round(4 n / 16) of n frames' steps move more than 6 px
    assert flow.is_dynamic(np.array([7.0] * 4 + [0.0] * 11))        # n = 16 frames, 4 steps
    assert not flow.is_dynamic(np.array([7.0] * 3 + [0.0] * 12))
    assert flow.frame_stride(16) == 2 and flow.frame_stride(24) == 3
    still = np.repeat((255 * _smooth_pattern(0, 0))[None, :, :, None].astype(np.uint8), 3, axis=-1)
    video = np.concatenate([still] * 8)
    assert table1.score_video(video, 8, [8], ["x"], table1.Extractors())["metrics"]["dynamic_degree"] == 0.0
    moving = np.stack([np.repeat((255 * _smooth_pattern(8 * i, 0))[..., None], 3, -1) for i in range(8)])
    r = table1.score_video(moving.astype(np.uint8), 8, [4, 4], ["a", "b"], table1.Extractors())
    assert r["metrics"]["dynamic_degree"] == 100.0 and r["per_shot"]["motion"][0] > 6
    assert r["metrics"]["intra_subject"] is None and r["metrics"]["text_alignment"] is None
