"""Shapes world and its exact metrics: checked against the issue's rules written out here and area formulas."""
import json
import re

import numpy as np
import pytest

from shotstream_jax import video_io
from shotstream_jax.data import manifest, shapes
from shotstream_jax.eval import shapes as metrics

# The issue's fixed words and colours, written out independently of the module.
PALETTE = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (240, 200, 40),
           "white": (240, 240, 240), "black": (25, 25, 25)}
GRAMMAR = re.compile(r"(wide shot|close-up) of (the same character|a (red|green|blue|yellow|white|black) "
                     r"(circle|square|triangle)) (moving (left|right|up|down)|standing still) on a "
                     r"(red|green|blue|yellow|white|black) background")
STORIES = [shapes.make_story(3, i) for i in range(16)]


def test_palette_and_captions_follow_the_issue():
    """Reference: the issue's palette and caption grammar, as regular expressions in this test."""
    assert shapes.PALETTE == PALETTE
    for story in STORIES:
        assert 2 <= len(story.shots) <= 5
        assert not story.shots[0].same
        assert not any(w in story.global_caption.lower() for w in [*PALETTE, "circle", "square", "triangle"])
        for i, shot in enumerate(story.shots):
            assert GRAMMAR.fullmatch(shot.caption), shot.caption
            assert shot.background != shot.colour
            if i:
                assert shot.background != story.shots[i - 1].background
                if shot.same:
                    assert (shot.colour, shot.shape) == (story.shots[i - 1].colour, story.shots[i - 1].shape)
    assert sum(s.same for st in STORIES for s in st.shots) > sum(not s.same for st in STORIES for s in st.shots[1:])


def test_stories_are_deterministic_by_seed():
    """Reference: the same (seed, index) gives the same story and pixels; another seed another story."""
    assert shapes.make_story(3, 5) == STORIES[5]
    np.testing.assert_array_equal(shapes.render_story(shapes.make_story(3, 5)), shapes.render_story(STORIES[5]))
    assert [shapes.make_story(4, i).captions for i in range(8)] != [s.captions for s in STORIES[:8]]


@pytest.mark.parametrize("shape,area", [("circle", np.pi * 8 ** 2), ("square", 16 ** 2), ("triangle", 16 ** 2 / 2)])
def test_shape_masks_have_the_area_of_the_formula(shape, area):
    """Reference: circle pi r^2, square s^2, upright triangle s^2/2 for height s = 16."""
    m = shapes.shape_mask(shape, 30.3, 28.7, 16, 64)
    assert m.sum() == pytest.approx(area, rel=0.02)


def test_motion_travels_a_quarter_frame_and_stays_in_frame():
    """Reference: the issue's motion rules (>= 1/4 frame travel, shape in frame) evaluated on the path."""
    for story in STORIES:
        for s in story.shots:
            half = shapes.FRAMINGS[s.framing] * 64 / 2
            dx, dy = s.end[0] - s.start[0], s.end[1] - s.start[1]
            if s.motion == "standing still":
                assert dx == dy == 0
            else:
                assert np.hypot(dx, dy) >= 16
                assert (np.sign(dx), np.sign(dy)) == shapes.MOTIONS[s.motion]
            for x, y in (s.start, s.end):
                assert half <= x <= 64 - half and half <= y <= 64 - half


def test_ground_truth_scores_one_on_every_metric():
    """Reference: the captions the world wrote; the rendered pixels must score 1.0 on every metric."""
    out = metrics.score((shapes.render_story(s), [x.caption for x in s.shots]) for s in STORIES)
    for m in metrics.METRICS:
        assert out[m] == 1.0, (m, out[m])


def test_written_dataset_reads_back_and_scores_one(tmp_path):
    """Reference: manifest.read_manifest (the training reader) and the metrics on the decoded mp4s."""
    path = shapes.write_dataset(str(tmp_path), num_stories=3, seed=11)
    clips, skipped = manifest.read_manifest(path)
    stories = [shapes.make_story(11, i) for i in range(3)]
    assert skipped == 0 and len(clips) == sum(len(s.shots) - 1 for s in stories)   # one row per 2..n prefix
    assert [len(c.ranges) for c in clips[:len(stories[0].shots) - 1]] == list(range(2, len(stories[0].shots) + 1))
    assert clips[0].ranges == tuple((k * 33, (k + 1) * 33) for k in range(len(clips[0].ranges)))
    assert clips[0].prompts[1].startswith(shapes.make_story(11, 0).global_caption + "shot1:")
    out = metrics.evaluate(str(tmp_path / "stories.json"), str(tmp_path))
    assert all(out[m] == 1.0 for m in metrics.METRICS), out


def test_written_dataset_is_the_same_with_worker_processes(tmp_path):
    """Reference: the one-process writer; worker processes must write the same videos, captions and manifest."""
    one = shapes.write_dataset(str(tmp_path / "one"), num_stories=3, seed=11)
    two = shapes.write_dataset(str(tmp_path / "two"), num_stories=3, seed=11, workers=2)
    for name in ["manifest.csv", "stories.json"] + [f"{i:05d}.json" for i in range(3)]:
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text(), name
    for a, b in zip(manifest.read_manifest(one)[0], manifest.read_manifest(two)[0]):
        np.testing.assert_array_equal(video_io.read_video(a.video)[0], video_io.read_video(b.video)[0])


def test_shuffled_and_recoloured_stories_score_low():
    """Reference: chance levels; another story's captions or swapped colour words must not match the pixels."""
    by_len = {}
    for s in [shapes.make_story(3, i) for i in range(24)]:
        by_len.setdefault(len(s.shots), []).append(s)
    shuffled = [(shapes.render_story(a), [x.caption for x in b.shots])
                for group in by_len.values() for a, b in zip(group, group[1:] + group[:1]) if a is not b]
    out = metrics.score(shuffled)
    assert out["background"] < 0.4 and out["character_colour"] < 0.4 and out["motion"] < 0.5
    swap = dict(zip(PALETTE, list(PALETTE)[1:] + list(PALETTE)[:1]))
    recoloured = [(shapes.render_story(s), [re.sub("|".join(PALETTE), lambda m: swap[m.group(0)], x.caption)
                                            for x in s.shots]) for s in STORIES[:8]]
    out = metrics.score(recoloured)
    assert out["background"] == 0.0 and out["character_colour"] == 0.0 and out["same_character"] == 0.0
    assert out["character_shape"] == 1.0   # only the colours were changed


def test_cut_and_smoothness_catch_broken_videos():
    """Reference: a video with its frames reversed inside shot 1 still scores cuts; one with a cut inside a
    shot and a flickering shot loses exactly those items."""
    s = STORIES[0]
    captions = [x.caption for x in s.shots]
    video = shapes.render_story(s)
    n = len(s.shots)
    broken = video.copy()
    broken[10:33] = video[33 + 10:66]          # a cut inside shot 1 (and one back at its end, the boundary)
    out = metrics.score_story(broken, captions)
    assert out["cut"][n - 1] == 0.0            # shot 1 has a cut inside it
    flicker = video.copy()
    flicker[1:33:2] = 255 - video[1:33:2]
    assert metrics.score_story(flicker, captions)["smoothness"][0] == 0.0


def test_frames_with_no_palette_colour_read_as_nothing():
    """Reference: a grey video, far from every palette colour, shows no background and no character, so a
    caption that says red scores 0 on it (a bincount of no pixels once read as the palette's first, red)."""
    from shotstream_jax.eval.shapes import read_shot
    grey = np.full((6, 64, 64, 3), 128, np.uint8)
    shot = read_shot(grey)
    assert shot["background"] is None and shot["character_colour"] is None
    assert shot["frames"][0].background == metrics.NONE
    out = metrics.score_story(np.concatenate([grey, grey]), ["wide shot of a blue circle standing still on a red "
                                                              "background", "close-up of the same character "
                                                              "standing still on a green background"])
    assert out["background"] == [0.0, 0.0] and out["character_colour"] == [0.0, 0.0]


def test_bad_captions_and_story_files_fail_clearly(tmp_path):
    """Reference: the grammar; an off-grammar caption or a broken stories file names the problem."""
    with pytest.raises(ValueError, match="not a Shapes-world caption"):
        shapes.parse_caption("a cat on a mat")
    with pytest.raises(ValueError, match="no earlier shot"):
        shapes.resolve_captions(["wide shot of the same character standing still on a red background"])
    bad = tmp_path / "stories.json"
    bad.write_text(json.dumps({"stories": [{"shots": []}]}))
    with pytest.raises(ValueError, match="not a Shapes stories file"):
        metrics.evaluate(str(bad), str(tmp_path))


def test_tokenizer_covers_every_prompt(tmp_path):
    """Reference: text.Tokenizer (the loader generation uses) on the world's prompts: no <unk>, </s> last."""
    from shotstream_jax.text import Tokenizer, shot_prompt
    tok = Tokenizer(shapes.write_tokenizer(str(tmp_path / "tokenizer.json")))
    for story in STORIES:
        for i, shot in enumerate(story.shots):
            ids = tok(shot_prompt(story.global_caption, i, shot.caption))
            assert 2 not in ids and ids[-1] == tok.eos_id == 1 and len(ids) <= 32


def _shapes_config(name: str):
    """configs/shapes/NAME.py's get_config(), loaded as the config flag loads it (a file, not a module)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("c", f"configs/shapes/{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


@pytest.mark.parametrize("stage", ["vae", "vae_shots", "teacher", "teacher_more", "teacher_long", "teacher_long_more",
                                   "ode_pairs", "ode_init", "dmd_intra", "dmd_inter", "generate"])
def test_shapes_configs_keep_the_inference_structure(stage):
    """Reference: the issue's numbers (64x64, 16 fps, 3-latent-frame chunks, >= 3 per shot, 6 context
    frames, 4 steps) and the world's 33-frame shots (1 + 4 * 8 pixel frames)."""
    c = _shapes_config(stage)
    s = c.shotstream
    assert c.stage == ("vae" if stage == "vae_shots" else "teacher" if stage.startswith("teacher") else stage)
    assert (c.video.height, c.video.width, c.video.fps) == (64, 64, shapes.FPS)
    assert s.chunk_frames == 3 and s.shot_latent_frames // s.chunk_frames >= 3 and s.shot_latent_frames % 3 == 0
    assert s.context_frames == 6 and len(s.denoising_steps) == 4
    assert c.video.shot_frames == shapes.SHOT_FRAMES == 1 + 4 * (s.shot_latent_frames - 1)
    if stage == "vae_shots":   # the VAE finishes on whole shots: generation decodes whole shots
        assert c.train.clip_frames == c.video.shot_frames


def test_shapes_4x_vae_configs_share_one_architecture():
    """Reference: WanVAEConfig's spatial factor (4 = two downsampling stages at 64x64: 16x16 latents), the
    world's shot length for the whole-shot cycle and a lone weighted frame for the frames cycle."""
    from shotstream_jax.models.wan_vae import WanVAEConfig
    got = {}
    for name in ("vae4x", "vae4x_shots", "vae4x_frames"):
        got[name] = _shapes_config(name)
        assert got[name].stage == "vae"
        vae = WanVAEConfig(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                              for k, v in got[name].vae.to_dict().items()})
        assert (vae.spatial_factor, vae.temporal_factor) == (4, 4)
    assert got["vae4x"].vae.to_dict() == got["vae4x_shots"].vae.to_dict() == got["vae4x_frames"].vae.to_dict()
    assert got["vae4x_shots"].train.clip_frames == shapes.SHOT_FRAMES
    assert got["vae4x_frames"].train.clip_frames == 1 and got["vae4x_frames"].train.foreground_weight > 0


def test_shapes_vae_sharp_config_keeps_the_shipped_vae_architecture():
    """Reference: vae.py's VAE section (the shipped 8x VAE that init_dir holds) and the world's shot length:
    the decoder-only stage must load that VAE and decode whole shots, as generation does."""
    sharp, base = _shapes_config("vae_sharp"), _shapes_config("vae")
    assert sharp.stage == "vae" and sharp.train.decoder_only
    assert sharp.vae.to_dict() == base.vae.to_dict()
    assert sharp.train.clip_frames == shapes.SHOT_FRAMES
