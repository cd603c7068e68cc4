"""shotstream-generate end to end on the default model: the mp4 read back with imageio's ffmpeg
reader has the model's frames per shot and size at 16 fps; bad input fails fast with one clean line
and no file."""
import json
import os

import pytest

from shotstream_jax.video_io import read_video
from tests.conftest import default_video, run_python

GEN = ("-m", "shotstream_jax.cli.generate", "--noprogress")


def _clean_failure(r, *needles):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def test_story_file(tmp_path):
    story = tmp_path / "story.json"
    story.write_text(json.dumps({"global_caption": "A story about one character.",
                                 "shot1": "wide shot of a white square moving left on a green background",
                                 "shot2": "close-up of the same character standing still on a red background"}))
    out = tmp_path / "story.mp4"
    r = run_python(*GEN, f"--story={story}", f"--out={out}", "--seed=3")
    assert r.returncode == 0, r.stderr
    n, h, w = default_video()
    frames, fps = read_video(str(out))
    assert frames.shape == (2 * n, h, w, 3) and fps == 16
    assert f"{2 * n} frames" in r.stdout and "FPS" in r.stdout
    assert "orbax" not in r.stderr     # loading the model stays quiet (no INFO logs) without --verbosity
    assert "warning" not in r.stderr   # every word is in the model's vocabulary
    assert set(os.listdir(tmp_path)) == {"story.json", "story.mp4"}  # no temporary left behind


def test_interactive_stdin(tmp_path):
    out = tmp_path / "live.mp4"
    r = run_python(*GEN, "--interactive", f"--out={out}",
                   stdin="A story about one character.\nwide shot of a yellow triangle moving up on a black background "
                         "at dusk\n\nignored after the empty line\n")
    assert r.returncode == 0, r.stderr
    # Words the default model's vocabulary lacks: one plain line naming them, no Python file:line form.
    assert "shotstream-generate: warning: the model's tokenizer does not know 'at', 'dusk'" in r.stderr, r.stderr
    assert "UserWarning" not in r.stderr
    n, h, w = default_video()
    frames, fps = read_video(str(out))
    assert frames.shape == (n, h, w, 3) and fps == 16


def test_compilation_cache_reused(tmp_path):
    # The first run writes its compiled steps under $XDG_CACHE_HOME/shotstream_jax/xla; a second run
    # with the same shapes reads every one of them back (a miss would write its entry again).
    story = tmp_path / "story.json"
    story.write_text(json.dumps({"global_caption": "A story about one character.",
                                 "shot1": "wide shot of a white square moving left on a green background"}))
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    r = run_python(*GEN, f"--story={story}", f"--out={tmp_path / 'a.mp4'}", env=env)
    assert r.returncode == 0, r.stderr
    cache = tmp_path / "xdg" / "shotstream_jax" / "xla"
    entries = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert any("stream_chunk" in name for name in entries), sorted(entries)
    r = run_python(*GEN, f"--story={story}", f"--out={tmp_path / 'b.mp4'}", f"--compilation_cache={cache}")
    assert r.returncode == 0, r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == entries
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


@pytest.mark.parametrize("content, needle", [
    ("{broken", "not valid JSON"),
    ('{"global_caption": "g", "shots": ["ok", ""]}', "shots[1] is empty"),
])
def test_bad_story_files(tmp_path, content, needle):
    story = tmp_path / "s.json"
    story.write_text(content)
    out = tmp_path / "o.mp4"
    r = run_python(*GEN, f"--story={story}", f"--out={out}")
    _clean_failure(r, "s.json", needle)
    assert not out.exists()


def test_unwritable_output_and_usage(tmp_path):
    r = run_python(*GEN, "--story=examples/story.json", f"--out={tmp_path}/missing/dir/o.mp4")
    _clean_failure(r, "does not exist")
    r = run_python(*GEN, "--out=o.mp4")
    assert r.returncode != 0 and "exactly one of --story" in r.stderr
    r = run_python(*GEN, "--interactive", f"--out={tmp_path}/none.mp4", stdin="A caption.\n\n")
    _clean_failure(r, "no frames")
    assert not (tmp_path / "none.mp4").exists()
