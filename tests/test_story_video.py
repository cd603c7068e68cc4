"""Story-file parsing (both formats) and the atomic mp4 writer, read back with imageio's ffmpeg reader."""
import json
import os

import numpy as np
import pytest

from shotstream_jax.story import StoryError, load_story, parse_story
from shotstream_jax.video_io import VideoWriter, read_video


def test_both_story_formats(tmp_path):
    ours = parse_story({"global_caption": "A city.", "shots": ["Wide.", " Close. "]})
    ref = parse_story({"global_caption": "A city.", "shot2": "Close.", "shot1": "Wide."})
    assert ours == ref and ours.shots == ("Wide.", "Close.")
    s = load_story("examples/story.json")
    assert len(s.shots) == 3 and s.global_caption == "A story about one character."


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"shots": ["a"]}', "missing 'global_caption'"),
    ('{"global_caption": "g"}', "no shots"),
    ('{"global_caption": "g", "shots": []}', "no shots"),
    ('{"global_caption": "g", "shots": ["a", "  "]}', "shots\\[1\\] is empty"),
    ('{"global_caption": "", "shots": ["a"]}', "global_caption is empty"),
    ('{"global_caption": "g", "shot1": "a", "shot3": "b"}', "without gaps"),
    ('{"global_caption": "g", "shots": "a"}', "must be a list"),
])
def test_malformed_story_files(tmp_path, content, problem):
    p = tmp_path / "story.json"
    p.write_text(content)
    with pytest.raises(StoryError, match=f"story.json: .*{problem}"):
        load_story(str(p))
    with pytest.raises(StoryError, match="no such story file"):
        load_story(str(tmp_path / "absent.json"))


def test_mp4_round_trip_and_atomicity(tmp_path):
    out = tmp_path / "v.mp4"
    frames = np.zeros((9, 32, 48, 3), np.uint8)
    frames[:, :, :24] = 200
    with VideoWriter(str(out), fps=16) as w:
        w.write(frames[:5])
        w.write(frames[5:])
    back, fps = read_video(str(out))
    assert back.shape == frames.shape and fps == 16
    assert np.abs(back.astype(int) - frames).mean() < 4  # lossy codec, flat colours survive

    failed = tmp_path / "failed.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(str(failed)) as w:
            w.write(frames[:3])
            raise RuntimeError("interrupted")
    assert not failed.exists()
    assert os.listdir(tmp_path) == ["v.mp4"]


def test_unwritable_destination(tmp_path):
    with pytest.raises(OSError, match="does not exist"):
        with VideoWriter(str(tmp_path / "no" / "dir" / "v.mp4")):
            pass
    with pytest.raises(OSError, match="is a directory"):
        with VideoWriter(str(tmp_path)):
            pass
def test_ffmpeg_is_started_without_preexec_fn():
    """Reference: imageio-ffmpeg's own Popen arguments (its documented IMAGEIO_FFMPEG_NO_PREVENT_SIGINT
    switch): no Python code may run between fork and exec in our multithreaded processes."""
    import shotstream_jax  # noqa: F401
    from imageio_ffmpeg import _utils
    assert _utils._popen_kwargs(prevent_sigint=True)["preexec_fn"] is None
