"""The weight-free cut detector against stories whose boundaries are known by construction:
Shapes-world hard cuts, cross-fades made here, and a panning shot with no cut at all."""
import numpy as np

from shotstream_jax.data import shapes
from shotstream_jax.eval import cuts


def _shots(index):
    return [shapes.render_shot(s) for s in shapes.make_story(0, index).shots]


def test_hard_cuts_in_shapes_stories_are_found_at_their_frame():
    for i in range(4):
        shots = _shots(i)
        assert cuts.detect_cuts(np.concatenate(shots)) == cuts.boundaries([len(s) for s in shots])


def test_cross_fades_are_found_at_their_middle():
    for i, length in enumerate((4, 8, 12)):
        frames, truth = cuts.cross_fade(_shots(i), length)
        found = cuts.detect_cuts(frames)
        assert cuts.match(found, truth, tol=length // 2 + 2) == (len(truth), 0, 0), (length, found, truth)
    # the fade itself: frame k of an L-frame fade is (k + 1) / (L + 1) of the next shot
    a, b = np.zeros((6, 4, 4, 3), np.uint8), np.full((6, 4, 4, 3), 250, np.uint8)
    frames, truth = cuts.cross_fade([a, b], 4)
    assert len(frames) == 8 and truth == [4]
    np.testing.assert_array_equal(frames[2:6, 0, 0, 0], np.round(250 * np.arange(1, 5) / 5))


def test_motion_and_noise_are_not_cuts():
    rng = np.random.default_rng(0)
    big = rng.random((160, 160, 3))
    for axis in (0, 1):  # a smooth texture, panned 2 px per frame, with sensor noise
        big = np.apply_along_axis(lambda r: np.convolve(r, np.ones(9) / 9, mode="same"), axis, big)
    big = (big - big.min()) / (big.max() - big.min())
    pan = np.stack([np.clip(255 * big[2 * i:2 * i + 64, 40:104] + rng.normal(0, 3, (64, 64, 3)), 0, 255)
                    for i in range(40)]).astype(np.uint8)
    assert cuts.detect_cuts(pan) == []
    assert cuts.detect_cuts(pan[:1]) == []
    # per-frame features join the distance: a cut visible only in them is found
    feats = np.repeat(np.eye(2), [20, 20], axis=0)
    assert cuts.detect_cuts(np.repeat(pan[:1], 40, axis=0), features=feats) == [20]
