"""shotstream-eval --videos end to end on mp4s written here, with tiny random CLIP / DINOv2 /
aesthetic checkpoints in the transformers layouts: the JSON, the Table-1 Markdown and the PNG
plot; extractors not given are reported as not computed; a broken video is reported and skipped."""
import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model

from shotstream_jax.eval.table1 import METRICS, shot_lengths, story_for
from shotstream_jax.story import StoryError
from shotstream_jax.video_io import VideoWriter
from tests.conftest import run_python

WORDS = ["a", "red", "blue", "circle", "square", "on", "background", "moving", "left", "the"]


def _checkpoints(d):
    torch.manual_seed(0)
    vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate(WORDS)}, "<|startoftext|>": 98, "<|endoftext|>": 99}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 98), ("<|endoftext|>", 99)])
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, eos_token_id=99),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=7),
        projection_dim=16))
    clip.save_pretrained(d / "clip")
    tok.save(str(d / "clip" / "tokenizer.json"))
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                             image_size=28, patch_size=14)).save_pretrained(d / "dino")
    rng = np.random.default_rng(0)
    np.savez(d / "aesthetic.npz", weight=rng.standard_normal((1, 16)).astype(np.float32),
             bias=np.array([5.0], np.float32))


def _video(path, colours, n=8, size=32):
    frames = []
    for c in colours:
        shot = np.full((n, size, size, 3), c, np.uint8)
        for i in range(n):
            shot[i, 8:20, 4 + i:16 + i] = 255 - np.array(c)  # a square moving right
        frames.append(shot)
    with VideoWriter(str(path), fps=8) as w:
        w.write(np.concatenate(frames))


def test_eval_cli_scores_videos(tmp_path):
    _checkpoints(tmp_path)
    vids = tmp_path / "videos"
    vids.mkdir()
    _video(vids / "a.mp4", [(200, 30, 30), (30, 30, 200)])
    _video(vids / "b.mp4", [(30, 200, 30), (200, 200, 30)])
    (vids / "broken.mp4").write_bytes(b"not a video")
    story = tmp_path / "story.json"
    story.write_text(json.dumps({"global_caption": "a story", "shots": ["a red square", "a blue square moving"]}))
    out = tmp_path / "out" / "scores.json"
    out.parent.mkdir()

    r = run_python("-m", "shotstream_jax.cli.eval", f"--videos={vids}", f"--story={story}", f"--json={out}",
                   f"--clip={tmp_path / 'clip'}", f"--dino={tmp_path / 'dino'}",
                   f"--aesthetic={tmp_path / 'aesthetic.npz'}", "--noprogress")
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    assert set(rep["videos"]) == {"a.mp4", "b.mp4"} and "broken.mp4" in rep["skipped"]
    assert "broken.mp4" in r.stderr and rep["not_computed"] == {}
    a = rep["videos"]["a.mp4"]
    assert a["shot_lengths"] == [8, 8] and a["boundaries"] == [8]
    assert a["metrics"]["transition_control"] == 1.0 and a["cuts"] == [8]
    assert all(rep["mean"][k] is not None for k, _, _ in METRICS)
    assert 0.0 < a["metrics"]["intra_subject"] <= 1.0 and len(a["per_shot"]["text_alignment"]) == 2
    table = (tmp_path / "out" / "scores.md").read_text()
    assert "| Intra-shot subject |" in table and "| a.mp4 |" in table and "ShotStream (paper)" in table
    assert (tmp_path / "out" / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # no extractors: the feature metrics are listed as not computed, never guessed
    r = run_python("-m", "shotstream_jax.cli.eval", f"--videos={vids / 'a.mp4'}", f"--story={story}",
                   f"--json={out}", "--noprogress")
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    assert rep["not_computed"]["intra_subject"] == ["dino"] and rep["not_computed"]["text_alignment"] == ["clip"]
    assert rep["mean"]["intra_subject"] is None and rep["mean"]["transition_control"] == 1.0
    assert "n/c" in (tmp_path / "out" / "scores.md").read_text()

    # bad inputs: one clear line naming the file, no traceback
    r = run_python("-m", "shotstream_jax.cli.eval", f"--videos={vids}", f"--story={tmp_path / 'nope.json'}",
                   f"--json={out}")
    assert r.returncode != 0 and "nope.json" in r.stderr and "Traceback" not in r.stderr
    r = run_python("-m", "shotstream_jax.cli.eval", f"--videos={vids}", f"--story={story}", f"--json={out}",
                   f"--dino={tmp_path / 'clip'}")
    assert r.returncode != 0 and "embeddings.cls_token" in r.stderr and "Traceback" not in r.stderr


def test_story_shot_lengths(tmp_path):
    # shots are equal unless the story lists "shot_frames"; mismatches name the story file
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"global_caption": "g", "shot1": "a", "shot2": "b", "shot_frames": [5, 11]}))
    captions, given, src = story_for(str(tmp_path / "v.mp4"), str(f))
    assert captions == ["a", "b"] and shot_lengths(16, 2, given, src) == [5, 11]
    with pytest.raises(ValueError, match="s.json: shot_frames add up to 16 frames; the video has 17"):
        shot_lengths(17, 2, given, src)
    assert shot_lengths(16, 2, None, src) == [8, 8]
    with pytest.raises(ValueError, match="17 frames do not split into 2 equal shots.*s.json"):
        shot_lengths(17, 2, None, src)
    (tmp_path / "v.json").write_text(json.dumps({"global_caption": "g", "shots": ["a"], "shot_frames": [0]}))
    with pytest.raises(StoryError, match="v.json: 'shot_frames' must list one positive frame count per shot"):
        story_for(str(tmp_path / "v.mp4"), str(tmp_path))  # a folder: <video name>.json
