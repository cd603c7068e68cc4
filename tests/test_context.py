"""Context sampling and RoPE layout against index lists written out by hand from the original's rule."""
import numpy as np
import pytest
import torch

from shotstream_jax import config, context


def test_counts_by_hand():
    assert context.context_counts(1) == [6]
    assert context.context_counts(2) == [3, 3]
    assert context.context_counts(4) == [1, 1, 2, 2]  # remainder one each to the most recent
    assert context.context_counts(5) == [1, 1, 1, 1, 2]
    assert context.context_counts(8) == [0, 0, 1, 1, 1, 1, 1, 1]
    assert context.context_counts(3, budget=7) == [2, 2, 3]


def test_sample_context_by_hand():
    assert context.sample_context([81]) == [(0, 0), (0, 16), (0, 32), (0, 48), (0, 64), (0, 80)]
    # shot 1 spans 81..161: linspace(81, 161, 3) = 81, 121, 161
    assert context.sample_context([81, 81]) == [(0, 0), (0, 40), (0, 80), (1, 0), (1, 40), (1, 80)]
    # 3 shots of 10, 7, 5: 2 each; shot 0 [0, 9], shot 1 [10, 16], shot 2 [17, 21]
    assert context.sample_context([10, 7, 5]) == [(0, 0), (0, 9), (1, 0), (1, 6), (2, 0), (2, 4)]
    # 4 shots, budget 6: [1, 1, 2, 2]; a count of 1 takes the first frame
    assert context.sample_context([5, 5, 5, 5]) == [(0, 0), (1, 0), (2, 0), (2, 4), (3, 0), (3, 4)]
    # 5 shots of 4: [1, 1, 1, 1, 2]
    assert context.sample_context([4] * 5) == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (4, 3)]
    # budget 5 over 2 shots of 8: [2, 3]; shot 1 = linspace(8, 15, 3) = 8, 11.5 -> 12 (half to even), 15
    assert context.sample_context([8, 8], budget=5) == [(0, 0), (0, 7), (1, 0), (1, 4), (1, 7)]
    assert context.sample_context([]) == []
    with pytest.raises(ValueError, match="at least one frame"):
        context.sample_context([3, 0])


def test_sample_context_matches_torch_rule():
    """Reference: the original's torch.linspace(start, end, count).round() over global indices."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        lengths = rng.integers(1, 120, size=rng.integers(1, 6)).tolist()
        want, start = [], 0
        for shot, (n, c) in enumerate(zip(lengths, context.context_counts(len(lengths)))):
            idx = torch.linspace(start, start + n - 1, steps=c).round().long().tolist()
            want += [(shot, i - start) for i in idx]
            start += n
        assert context.sample_context(lengths) == want


def test_shot_layout():
    first = context.shot_layout([], shot_index=0, target_frames=21)
    np.testing.assert_array_equal(first.frame_pos, np.arange(27))
    np.testing.assert_array_equal(first.frame_shot, [0] * 6 + [1] * 21)
    np.testing.assert_array_equal(first.frame_prompt, [0] * 27)
    third = context.shot_layout([0, 0, 0, 1, 1, 1], shot_index=2, target_frames=21)
    np.testing.assert_array_equal(third.frame_pos, np.arange(27))
    np.testing.assert_array_equal(third.frame_shot, [0, 0, 0, 1, 1, 1] + [2] * 21)
    np.testing.assert_array_equal(third.frame_prompt, [0, 0, 0, 1, 1, 1] + [2] * 21)
    assert third.target_shot == 2
    cfg = config.get_config("toy", "generate").shotstream
    assert context.shot_theta(cfg) == pytest.approx(1 / 6)
    cfg.shot_indicator = False
    assert context.shot_theta(cfg) == 0.0


def test_rope_angles_follow_shot_phase_formula():
    """Reference: temporal angle phi_j * t + k * theta written out by hand (rope_angles on a ShotLayout)."""
    import jax.numpy as jnp

    from shotstream_jax.models.wan_dit import WanDiTConfig, rope_angles

    cfg = WanDiTConfig.from_size("tiny", text_dim=32, freq_dim=32, text_len=16)
    d = cfg.head_dim  # 32: temporal pairs d/2 - 2 (d // 6) = 6
    n_t = (d - 4 * (d // 6)) // 2
    phi = 1.0 / 10000 ** (np.arange(0, 2 * n_t, 2) / (2 * n_t))
    cases = {  # shot index -> context source shots
        0: [],
        1: [0] * 6,
        2: [0, 0, 0, 1, 1, 1],
    }
    for shot, ctx in cases.items():
        lay = context.shot_layout(ctx, shot, target_frames=21)
        for theta in (1 / 6, 0.0):
            rope = rope_angles(cfg, jnp.asarray(lay.frame_pos), jnp.asarray(lay.frame_shot), 1, 1, theta)
            got = np.arctan2(np.asarray(rope.sin), np.asarray(rope.cos))[:, :n_t]
            ks = (ctx or [0] * 6) + [shot + 1 if shot == 0 else shot] * 21
            want = np.array([[t * p + k * theta for p in phi] for t, k in zip(range(27), ks)])
            np.testing.assert_allclose(np.cos(got - want), 1.0, atol=1e-6)
