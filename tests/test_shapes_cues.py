"""Cue frames of the memory curriculum (data/shapes_cues.py) and the stage option that puts them in.

References: the Shapes metric code (eval/shapes.py) reading each rendered cue against the target shot's own
first frame, the toy encoder applied in the test to cue shots rendered in the test, and the context
written out by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shotstream_jax.config import get_config
from shotstream_jax.data import pipeline, preencode, shapes, shapes_cues, toy
from shotstream_jax.eval import shapes as eval_shapes


def _read(frames):
    """The metric's reading of a uint8 shot [T, H, W, 3]: its shot fields and its first frame's."""
    shot = eval_shapes.read_shot(frames)
    return shot, shot["frames"][0]


def test_cue_shots_show_the_target_character_on_the_context_shot_background():
    size, seen, moved = 64, 0, {1: [], 2: []}
    fresh_framing = []
    for i in range(40):
        story = shapes.make_story(3, i, size)
        for target in range(1, len(story.shots)):
            t = story.shots[target]
            truth, first = _read(shapes.render_shot(t, frames=2, size=size)[:1])
            for behind in range(target):
                cues = shapes_cues.cue_shots(story, target, behind, (3, i, target), size)
                assert len(cues) == len(shapes_cues.CUE_SHIFTS) == 4
                bg = story.shots[behind].background
                if bg in (t.colour, t.background):
                    bg = [c for c in shapes.COLOURS if c not in (t.colour, t.background)][0]
                for level, cue in enumerate(cues):
                    shot, frame = _read(shapes.render_shot(cue, frames=1, size=size))
                    assert shot["character_colour"] == t.colour and shot["character_shape"] == t.shape
                    assert shot["background"] == bg != t.background
                    d = np.hypot(*np.subtract(frame.centre, first.centre))
                    if level == 0:
                        assert d < 1.0 and shot["framing"] == t.framing
                    elif level < 3:
                        assert d <= shapes_cues.CUE_SHIFTS[level] * size + 1.0 and shot["framing"] == t.framing
                        moved[level].append(d)
                    else:
                        fresh_framing.append(shot["framing"] == t.framing)
                seen += 1
    assert seen > 40
    # Kept in frame, the character moves the full distance in most examples and further at level 2.
    assert np.mean(np.asarray(moved[1]) > 7.5) > 0.6 and np.mean(moved[2]) > np.mean(moved[1]) + 3
    assert 0.2 < np.mean(fresh_framing) < 0.8   # level 3's framing is drawn afresh, not the target's


@pytest.fixture(scope="module")
def cue_world(tmp_path_factory):
    """A 6-story 32x32 Shapes world pre-encoded by the toy encoders (the toy config's frame size)."""
    tmp = tmp_path_factory.mktemp("cues")
    manifest = shapes.write_dataset(str(tmp / "data"), num_stories=6, seed=5, shot_frames=9, size=32)
    cfg = get_config("toy", "teacher")
    n = preencode.preencode(cfg, manifest, str(tmp / "lat"), toy.toy_encode_video,
                            toy.ToyTextEncoder(cfg.model.text_dim, cfg.model.text_len))
    return cfg, tmp, n


def test_add_cues_encodes_each_example_target_character_and_goes_on_where_it_stopped(cue_world):
    cfg, tmp, n = cue_world
    lat = str(tmp / "lat")
    before = [dict(ex) for ex in pipeline.PreencodedSource(lat)]
    assert shapes_cues.add_cues(lat, cfg, toy.toy_encode_video, chunk=4) == n
    after = pipeline.PreencodedSource(lat)
    clips = preencode.manifest_clips(lat)
    # The codec's error: the world's own frames, read back from its videos, against their renderings.
    codec = 0.0
    for index in range(6):
        story = shapes.make_story(5, index, 32)
        frames = pipeline.read_video(str(tmp / "data" / f"{index:05d}.mp4"), 9 * len(story.shots))
        rendered = shapes.render_story(story, shot_frames=9, size=32)
        for got, want in zip(frames, rendered):
            codec = max(codec, np.abs(toy.toy_encode_video(got[None] / 127.5 - 1.0)
                                      - toy.toy_encode_video(want[None] / 127.5 - 1.0)).max())
    worst = 0.0
    for i in range(n):
        ex = after[i]
        for k, v in before[i].items():
            np.testing.assert_array_equal(ex[k], v, err_msg=k)
        index = int(clips[i].video[-9:-4])
        target = len(clips[i].ranges) - 1
        story = shapes.make_story(5, index, 32)
        cues = shapes_cues.cue_shots(story, target, int(ex["context_shot"][-1]), (5, index, target), 32)
        want = np.stack([toy.toy_encode_video(shapes.render_shot(c, frames=1, size=32).astype(np.float32)
                                              / 127.5 - 1.0)[0] for c in cues])
        assert ex["cue"].shape == (4, 4, 4, 16) and ex["cue"].dtype == np.float32
        worst = max(worst, np.abs(ex["cue"] - want).max())
        err = np.abs(ex["cue"][:, None] - want[None]).max((2, 3, 4))   # [stored level, rendered level]
        assert all(err[l, l] < err[l, m] for l in range(4) for m in range(4) if np.abs(want[l] - want[m]).max() > 0.2)
    assert worst <= 1.25 * codec   # no further from their renderings than the world's frames are
    # Examples that have cues are kept: a second run adds none, one with an example's cue removed adds one.
    assert shapes_cues.add_cues(lat, cfg, toy.toy_encode_video) == 0
    path = str(after.files[2])
    with np.load(path) as z:
        kept = {k: z[k] for k in z.files if k != "cue"}
    np.savez(path, **kept)
    assert shapes_cues.add_cues(lat, cfg, toy.toy_encode_video) == 1
    np.testing.assert_array_equal(pipeline.PreencodedSource(lat)[2]["cue"], after[2]["cue"])


def test_add_cues_needs_the_world_stories(cue_world, tmp_path):
    cfg, tmp, _ = cue_world
    with pytest.raises(ValueError, match="not a pre-encoded world"):
        shapes_cues.add_cues(str(tmp / "data"), cfg, toy.toy_encode_video)
    stories = tmp / "data" / "stories.json"
    saved = stories.read_bytes()
    stories.unlink()
    try:
        with pytest.raises(ValueError, match="stories.json"):
            shapes_cues.add_cues(str(tmp / "lat"), cfg, toy.toy_encode_video)
    finally:
        stories.write_bytes(saved)


def test_cue_frame_puts_the_chosen_level_last_in_the_context():
    """Reference: the example written out by hand; the rate is the share of examples that get it."""
    from shotstream_jax.train.stages import cue_frame
    ex = {"context": jnp.ones((6, 2, 2, 4)), "context_shot": jnp.asarray([0, 0, 1, 1, 2, 2]),
          "target": jnp.zeros((3, 2, 2, 4)), "cue": jnp.arange(4, dtype=jnp.float32)[:, None, None, None]
          + jnp.full((4, 2, 2, 4), 10.0)}
    out = jax.vmap(lambda k: cue_frame(ex, k, 0.5, 2))(jax.random.split(jax.random.PRNGKey(0), 2000))
    last = np.asarray(out["context"][:, -1])
    put = last[:, 0, 0, 0] == 12.0
    assert 0.45 < put.mean() < 0.55
    np.testing.assert_array_equal(last[~put], 1.0)
    np.testing.assert_array_equal(np.asarray(out["context"])[:, :-1], 1.0)
    np.testing.assert_array_equal(np.asarray(out["context_shot"]), np.broadcast_to(ex["context_shot"], (2000, 6)))
    with pytest.raises(ValueError, match="cue levels 0..3"):
        cue_frame(ex, jax.random.PRNGKey(0), 1.0, 4)
    with pytest.raises(ValueError, match="shapes_cues"):
        cue_frame({k: v for k, v in ex.items() if k != "cue"}, jax.random.PRNGKey(0), 1.0, 0)


def test_training_with_cue_frames_needs_them_in_the_data(tmp_path):
    """The toy data have no cue frames: one line that says how to add them, no traceback."""
    from tests.conftest import run_python
    r = run_python("-m", "shotstream_jax.cli.train", "--config=configs/toy/teacher.py", f"--workdir={tmp_path}",
                   "--config.train.steps=1", "--config.train.batch_size=1", "--config.train.cue_frame=1",
                   "--progress=false", "--config.video.shot_frames=21", "--config.shotstream.shot_latent_frames=6")
    assert r.returncode == 1 and "shapes_cues" in r.stderr and "Traceback" not in r.stderr


def test_the_commands_preencode_a_world_and_add_its_cues(tmp_path):
    """The documented commands, end to end on a 2-story world with the toy encoders; each bad input is one line."""
    from tests.conftest import run_python
    manifest = shapes.write_dataset(str(tmp_path / "data"), num_stories=2, seed=5, shot_frames=9, size=32)
    toy_cfg = "--config=configs/toy/teacher.py"
    r = run_python("-m", "shotstream_jax.data.preencode", toy_cfg, f"--config.data.manifest={manifest}",
                   f"--out={tmp_path / 'lat'}")
    assert r.returncode == 0 and "wrote" in r.stdout, r.stderr[-2000:]
    n = len(pipeline.PreencodedSource(str(tmp_path / "lat")))
    r = run_python("-m", "shotstream_jax.data.shapes_cues", toy_cfg, f"--config.data.latents_dir={tmp_path / 'lat'}")
    assert r.returncode == 0 and f"added cue frames (4 levels) to {n} examples" in r.stdout, r.stderr[-2000:]
    assert pipeline.PreencodedSource(str(tmp_path / "lat"))[0]["cue"].shape == (4, 4, 4, 16)
    for args, message in [((), "set --config.data.latents_dir"),
                          ((f"--config.data.latents_dir={tmp_path / 'data'}",), "not a pre-encoded world")]:
        r = run_python("-m", "shotstream_jax.data.shapes_cues", toy_cfg, *args)
        assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr
    r = run_python("-m", "shotstream_jax.data.preencode", toy_cfg, f"--out={tmp_path / 'other'}")
    assert r.returncode == 1 and "set --config.data.manifest" in r.stderr and "Traceback" not in r.stderr
