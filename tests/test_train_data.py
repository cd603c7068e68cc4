"""Training data against the reference format (demo/data/sample.csv, utils/dataset.py), its target-length rule
(trainer/*: stride len // 81, at most 81 frames, cut to 4k+1; decord reads at 480x832, a stretch) written
out here, and core's context rule."""
import csv
import json
import os

import numpy as np
import pytest

from shotstream_jax import context
from shotstream_jax.config import get_config
from shotstream_jax.data import manifest, pipeline, preencode, toy


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    toy.make_toy_dataset(str(d), num_videos=3, shot_frames=(30, 85, 20))
    return d


def _cfg():
    return get_config("toy", "teacher")


def test_manifest_reads_reference_sample_format(tmp_path):
    """The reference's own sample row and caption JSON layout."""
    (tmp_path / "v.mp4").write_bytes(b"x")
    (tmp_path / "c.json").write_text(json.dumps({"global_caption": "G", "shot1": "a", "shot2": "b"}))
    (tmp_path / "m.csv").write_text('shot_num_from_caption,json_path,video_path,frame_number\n'
                                    '2,c.json,v.mp4,"[[0, 56], [56,114]]"\n')
    clips, skipped = manifest.read_manifest(str(tmp_path / "m.csv"))
    assert skipped == 0 and clips[0].ranges == ((0, 56), (56, 114))
    assert clips[0].prompts == ("Gshot0:a", "Gshot1:b")  # utils/dataset.py: global + "shot{i}:" + caption


def test_broken_rows_are_skipped_and_counted(toy_dir, caplog):
    rows = list(csv.reader(open(toy_dir / "manifest.csv")))
    (toy_dir / "empty.json").write_text(json.dumps({"global_caption": "g", "shot1": "", "shot2": "x", "shot3": "y"}))
    (toy_dir / "bad.mp4").write_bytes(b"not a video")
    good = rows[1]
    broken = [
        [3, "0000.json", "missing.mp4", good[3]],                  # missing file
        [3, "0000.json", "0000.mp4", "[[0, 30], [30, 115], [115, 999]]"],  # ranges past the end
        [3, "empty.json", "0000.mp4", good[3]],                    # empty caption
        [3, "0000.json", "bad.mp4", good[3]],                      # unreadable video
    ]
    path = toy_dir / "mixed.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([rows[0], good] + broken)
    clips, skipped = manifest.read_manifest(str(path))
    assert skipped == 2 and len(clips) == 3      # missing file and empty caption fail on reading
    src = pipeline.ClipSource(clips, _cfg(), *pipeline.encoders(_cfg()))
    out = [src[i] for i in range(len(src))]
    assert out[0] is not None and out[1] is None and out[2] is None and src.broken == 2
    batches = iter(pipeline.dataset(src, 2, seed=0))
    b = next(batches)                              # broken clips dropped, never a crash
    assert b["target"].shape[0] == 2
    assert "skipped" in caplog.text
    # Pre-encoding with decoding processes skips the same two and counts all four.
    n = preencode.preencode(_cfg(), str(path), str(toy_dir / "mixed_pre"), *pipeline.encoders(_cfg()), workers=2)
    index = json.loads((toy_dir / "mixed_pre" / "index.json").read_text())
    assert n == 1 and index["examples"] == 1 and index["skipped"] == 4


def test_example_follows_next_shot_rule(toy_dir):
    """Context frames = core's sample_context over the history shots; the last shot is the target."""
    cfg = _cfg()
    clips, _ = manifest.read_manifest(str(toy_dir / "manifest.csv"))
    ex = pipeline.build_example(clips[0], cfg, *pipeline.encoders(cfg))
    picks = context.sample_context([30, 85], 6)
    assert ex["context_shot"].tolist() == [k for k, _ in picks]
    # target: 20 frames -> 17 (4k+1) -> 5 latent frames -> bucket 3 -> its first 9 frames
    assert ex["context"].shape == (6, 4, 4, 16) and ex["target"].shape == (3, 4, 4, 16)
    assert int(ex["target_shot"]) == 2 and int(ex["num_shots"]) == 3
    assert ex["text"].shape == (5, cfg.model.text_len, cfg.model.text_dim) and not ex["text"][3:].any() and ex["text"][:3].any()
    # a context frame is encoded alone: the toy VAE of that one resized frame
    frames = pipeline.read_video(clips[0].video, 135)
    k, i = picks[-1]
    one = pipeline.resize(frames[[30 * k + i]], 32, 32)
    np.testing.assert_allclose(ex["context"][-1], toy.toy_encode_video(one)[0], rtol=1e-5, atol=1e-6)
    target = toy.toy_encode_video(pipeline.resize(frames[115:124], 32, 32))
    np.testing.assert_allclose(ex["target"], target, rtol=1e-5, atol=1e-6)


def test_target_keeps_its_true_length():
    np.testing.assert_array_equal(pipeline.target_frame_indices(10, 180, 81), 10 + 2 * np.arange(81))
    np.testing.assert_array_equal(pipeline.target_frame_indices(0, 20, 81), np.arange(17))
    np.testing.assert_array_equal(pipeline.target_frame_indices(5, 65, 81), 5 + np.arange(57))
    np.testing.assert_array_equal(pipeline.target_frame_indices(0, 250, 81), 3 * np.arange(81))
    buckets = get_config("wan_1_3b", "teacher").data.length_buckets
    assert [pipeline.bucket_frames(n, buckets) for n in (21, 20, 15, 5, 3)] == [21, 18, 15, 3, 3]
    with pytest.raises(ValueError, match="shorter than the smallest"):
        pipeline.bucket_frames(2, buckets)


def test_batches_are_cut_to_their_shortest_target():
    """Examples of 6 and 3 latent frames (and their ODE states) stack into a batch of 3."""
    import grain
    exs = [{"target": np.full((n, 2, 2, 16), n, np.float32), "ode": np.ones((4, n, 2, 2, 16), np.float32)}
           for n in (6, 3)]
    ds = grain.MapDataset.source(exs).to_iter_dataset().map(pipeline.pad_target).batch(2).map(pipeline.trim_batch)
    b = next(iter(ds))
    assert b["target"].shape == (2, 3, 2, 2, 16) and b["ode"].shape == (2, 4, 3, 2, 2, 16)
    assert b["target_frames"].tolist() == [6, 3] and (b["target"][0] == 6).all()
    padded = pipeline.pad_target(exs[1])  # zeros after the true frames, in time (axis 1 of the ODE states)
    assert padded["target"].shape == (pipeline.MAX_LATENT_FRAMES, 2, 2, 16) and padded["target"].dtype == np.float32
    assert (padded["target"][:3] == 3).all() and not padded["target"][3:].any()
    assert padded["ode"].shape == (4, pipeline.MAX_LATENT_FRAMES, 2, 2, 16)
    assert (padded["ode"][:, :3] == 1).all() and not padded["ode"][:, 3:].any()


def test_resize_stretches_like_the_reference_or_crops():
    """A 2-pixel red left border of a 40x48 frame: stretched to 32x32 it stays (decord's resize), cover-scaled and
    centre-cropped it is cut off."""
    frame = np.zeros((1, 40, 48, 3), np.uint8)
    frame[:, :, :2, 0] = 255
    assert get_config("toy", "teacher").data.resize == "stretch"
    assert pipeline.resize(frame, 32, 32)[0, :, 0, 0].min() > 0
    assert pipeline.resize(frame, 32, 32, "crop")[0, :, 0, 0].max() == -1.0


def test_pipeline_is_deterministic_and_resumable(toy_dir):
    cfg = _cfg()
    src = pipeline.source(cfg, str(toy_dir.parent / "w"))
    it = iter(pipeline.dataset(src, 2, seed=3))
    first = [next(it)["target"] for _ in range(2)]
    state = it.get_state()
    after = next(it)["target"]
    again = iter(pipeline.dataset(src, 2, seed=3))
    np.testing.assert_array_equal(next(again)["target"], first[0])
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["target"], after)
    # Reading in the caller's thread (data.read_threads=0) changes nothing but the speed.
    inline = iter(pipeline.dataset(src, 2, seed=3, num_threads=0))
    np.testing.assert_array_equal(next(inline)["target"], first[0])
    inline.set_state(state)
    np.testing.assert_array_equal(next(inline)["target"], after)


def test_preencoded_examples_equal_online_ones(toy_dir, tmp_path):
    cfg = _cfg()
    enc = pipeline.encoders(cfg)
    n = preencode.preencode(cfg, str(toy_dir / "manifest.csv"), str(tmp_path / "pre"), *enc)
    assert n == 3 and os.path.exists(tmp_path / "pre" / "negative_text.npy")
    clips, _ = manifest.read_manifest(str(toy_dir / "manifest.csv"))
    online = pipeline.build_example(clips[1], cfg, *enc)
    stored = pipeline.PreencodedSource(str(tmp_path / "pre"))[1]
    for k, v in online.items():
        np.testing.assert_allclose(stored[k], v, rtol=2e-3, atol=2e-3, err_msg=k)
    # Worker processes decoding, batches of 2 clips: the same examples in the same files.
    assert preencode.preencode(cfg, str(toy_dir / "manifest.csv"), str(tmp_path / "pre3"), *enc, workers=3,
                               batch_clips=2) == 3
    one, three = pipeline.PreencodedSource(str(tmp_path / "pre")), pipeline.PreencodedSource(str(tmp_path / "pre3"))
    for i in range(3):
        for k, v in one[i].items():
            np.testing.assert_array_equal(three[i][k], v, err_msg=k)
    # keep_in_memory: the second read comes from memory, even once the file is gone.
    plain = pipeline.PreencodedSource(str(tmp_path / "pre"))
    kept = pipeline.PreencodedSource(str(tmp_path / "pre"), keep_in_memory=True)
    first = kept[1]
    kept.files[1].unlink()
    assert kept[1] is first and not first["target"].flags.writeable   # shared by every read: read-only
    with pytest.raises(FileNotFoundError):
        plain[1]


def test_stopped_preencode_goes_on_where_it_stopped(toy_dir, tmp_path):
    """Reference: one uninterrupted run. A run stopped at its third clip (after the progress of the first
    two, and a stray file of a clip it had not counted) is continued by the same call: the same files."""
    cfg = _cfg()
    encode_video, encode_text = pipeline.encoders(cfg)
    path = str(toy_dir / "manifest.csv")
    preencode.preencode(cfg, path, str(tmp_path / "whole"), encode_video, encode_text)
    calls = []

    def stops_at_third_clip(video):
        calls.append(1)
        if len(calls) > 4:   # two calls a clip: context frames, then the target shot
            raise KeyboardInterrupt
        return encode_video(video)

    with pytest.raises(KeyboardInterrupt):
        preencode.preencode(cfg, path, str(tmp_path / "out"), stops_at_third_clip, encode_text, save_every=2,
                            batch_clips=1)
    partial = tmp_path / "out.partial"
    assert not (tmp_path / "out").exists()
    assert json.loads((partial / "progress.json").read_text())["clips_done"] == 2
    (partial / "000005.npz").write_bytes(b"from a run stopped mid-way")
    other = _cfg()
    other.video.height = 64
    with pytest.raises(ValueError, match="stopped pre-encode"):
        preencode.preencode(other, path, str(tmp_path / "out"), encode_video, encode_text)
    assert preencode.preencode(cfg, path, str(tmp_path / "out"), encode_video, encode_text) == 3
    assert not partial.exists() and sorted(os.listdir(tmp_path / "out")) == sorted(os.listdir(tmp_path / "whole"))
    whole, resumed = pipeline.PreencodedSource(str(tmp_path / "whole")), pipeline.PreencodedSource(str(tmp_path / "out"))
    for i in range(3):
        for k, v in whole[i].items():
            np.testing.assert_array_equal(resumed[i][k], v, err_msg=k)
    assert json.loads((tmp_path / "out" / "index.json").read_text()) == \
        json.loads((tmp_path / "whole" / "index.json").read_text())


def test_encoders_from_a_full_model_directory(toy_dir, tmp_path):
    """data.encoder_dir: the model's Wan VAE (normalised, as pipeline.encode_context) and umT5 (default toy model)."""
    from shotstream_jax import default_model, model_dir
    _, dit, vae, text_encoder = default_model.build()
    model_dir.save(str(tmp_path / "m"), dit, vae=vae, text_model=text_encoder.model, tokenizer="bytes")
    cfg = _cfg()
    cfg.data.encoder_dir = str(tmp_path / "m")
    clips, _ = manifest.read_manifest(str(toy_dir / "manifest.csv"))
    ex = pipeline.build_example(clips[0], cfg, *pipeline.encoders(cfg))
    assert ex["context"].shape == (6, 4, 4, 16) and ex["target"].shape == (3, 4, 4, 16)
    np.testing.assert_allclose(ex["text"][0], np.asarray(text_encoder.encode(clips[0].prompts[0])[0]), atol=1e-5)
    frames = pipeline.read_video(clips[0].video, 135)
    k, i = context.sample_context([30, 85], 6)[0]
    one = pipeline.resize(frames[[30 * k + i]], 32, 32)
    want = vae.cfg.normalize(vae.encode(one[None]))[0, 0]
    np.testing.assert_allclose(ex["context"][0], np.asarray(want), rtol=1e-4, atol=1e-4)


def test_model_encoder_takes_a_batch_of_videos():
    """Reference: the VAE called on each video alone; a batch of 1-frame videos (how context frames are
    encoded) must give the same latents, and the text encoder's output is passed through."""
    from shotstream_jax import default_model
    encode_video, encode_text = pipeline.model_encoders(default_model.SHIPPED)
    frames = np.random.default_rng(0).uniform(-1, 1, (3, 1, 64, 64, 3)).astype(np.float32)
    alone = np.stack([encode_video(f) for f in frames])
    assert alone.shape == (3, 1, 8, 8, 16)
    np.testing.assert_allclose(encode_video(frames), alone, rtol=1e-5, atol=1e-5)
    # In fixed batches: one call padded from 3 to 4 videos, or (a 2-frame budget) a batch of 2 and a padded one.
    np.testing.assert_allclose(pipeline.encode_batched(encode_video, frames), alone, rtol=1e-5, atol=1e-5)
    calls = []
    counted = lambda v: calls.append(v.shape) or encode_video(v)
    np.testing.assert_allclose(pipeline.encode_batched(counted, frames, max_pixels=2 * 64 * 64), alone,
                               rtol=1e-5, atol=1e-5)
    assert calls == [(2, 1, 64, 64, 3)] * 2
    assert encode_text(["wide shot of a red circle moving left on a blue background"]).shape == (1, 32, 64)


def test_preencode_decodes_in_order_window_by_window():
    """Reference: the job applied clip by clip; several windows of a process pool must give the same order."""
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert list(preencode._decoded(pool, abs, list(range(-7, 0)), 3)) == [7, 6, 5, 4, 3, 2, 1]
        assert list(preencode._decoded(pool, abs, [], 3)) == []
