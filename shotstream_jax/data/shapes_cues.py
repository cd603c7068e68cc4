"""Cue frames for a Shapes teacher's memory curriculum: `python -m shotstream_jax.data.shapes_cues`.

    python -m shotstream_jax.data.shapes_cues --config=configs/shapes/teacher.py \
        --config.data.latents_dir=RUN/latents --config.data.encoder_dir=MODEL_DIR

A `the same character` target takes its character from the context frames, and a teacher trained on
the ordinary data never learned to read it there. The copy curriculum (train.copy_frame) put the
target's own first frame in the context; the teacher learned to go on from that frame whole, the
opposite of a cut (benchmarks/RESULTS.md, "Memory on one NVIDIA H200"). A cue frame shows the target's
character (colour, shape, size) on the background of the context shot it stands in for, so copying the
frame is wrong and copying the character is right. Its level moves the character further from the
target's first position:

    level 0  at the target's first position
    level 1  the centre 1/8 of the frame away (a direction drawn per example; kept in frame)
    level 2  1/4 of the frame away
    level 3  a framing and a still position drawn afresh, as in any earlier shot

Every example of a pre-encoded Shapes world (`data.preencode`) gets `cue` f32[levels, h, w, 16]. The
frames are rendered from the world (stories.json), go through the world's video codec as its frames
did, are resized as pre-encoding resized them, and are encoded each as its own 1-frame clip, as
context frames are. The teacher stage puts them in with train.cue_frame and train.cue_level
(`stages.cue_frame`); `eval.shapes_memory --cue_level` probes with them. Examples that already have
cues are kept, so a stopped run goes on where it stopped.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile

import numpy as np
from absl import app
from tqdm import tqdm

from shotstream_jax import checkpoint
from shotstream_jax.cli.common import data_command, define_config_flag
from shotstream_jax.data import pipeline, preencode, shapes

# Distance of each level's character from the target's first position, in frame sizes (None: drawn afresh).
CUE_SHIFTS = (0.0, 0.125, 0.25, None)


def cue_background(story: shapes.Story, target: int, behind: int) -> str:
    """The background of shot `behind` (the context shot the cue stands in for), unless it is the target
    character's colour or the target's background; then the first palette colour that is neither."""
    t = story.shots[target]
    taken = (t.colour, t.background)
    bg = story.shots[behind].background
    return bg if bg not in taken else next(c for c in shapes.COLOURS if c not in taken)


def cue_shots(story: shapes.Story, target: int, behind: int, key, size: int) -> list[shapes.Shot]:
    """One still shot per level of CUE_SHIFTS: shot `target`'s character on `cue_background`, its
    random direction and fresh framing drawn from np.random.default_rng(key)."""
    t = story.shots[target]
    rng = np.random.default_rng(key)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    step = np.asarray([np.cos(angle), np.sin(angle)])
    fresh = str(rng.choice(list(shapes.FRAMINGS)))
    fresh_centre, _ = shapes.centre_path(rng, fresh, "standing still", size)
    bg = cue_background(story, target, behind)
    out = []
    for shift in CUE_SHIFTS:
        if shift is None:
            framing, centre = fresh, fresh_centre
        else:
            framing = t.framing
            lo, hi = shapes.centre_range(framing, size)
            centre = tuple(float(c) for c in np.clip(np.asarray(t.start) + shift * size * step, lo, hi))
        out.append(dataclasses.replace(t, framing=framing, motion="standing still", background=bg, start=centre,
                                       end=centre))
    return out


def _through_codec(frames: np.ndarray, fps: int) -> np.ndarray:
    """uint8 frames as the world's videos store them: written as its mp4 (shapes.write_video), read back."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "cues.mp4")
        shapes.write_video(path, frames, fps)
        return pipeline.read_video(path, len(frames))


def _world(latents_dir: str):
    """(clips, (story index, story) by video name, seed, frame size, fps) of a pre-encoded Shapes world."""
    clips = preencode.manifest_clips(latents_dir)
    path = os.path.join(os.path.dirname(checkpoint.read_json(os.path.join(latents_dir, "index.json"))["manifest"]),
                        "stories.json")
    try:
        meta = checkpoint.read_json(path)
        names = {s["video"]: i for i, s in enumerate(meta["stories"])}
        seed, fps = int(meta["seed"]), int(meta["fps"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: cue frames need the Shapes world's stories.json beside its manifest "
                         f"(python -m shotstream_jax.data.shapes) ({e})") from None
    size = int(meta.get("size", shapes.HEIGHT))   # worlds written before the size was recorded are 64x64
    stories = {}
    for c in clips:
        name = os.path.basename(c.video)
        if name not in names:
            raise ValueError(f"{path}: no story for the manifest's video {c.video}")
        stories[name] = names[name], shapes.make_story(seed, names[name], size)
    return clips, stories, seed, size, fps


def add_cues(latents_dir: str, cfg, encode_video, chunk: int = 256) -> int:
    """Write `cue` into every example of `latents_dir` that has none; returns the number written.

    Each .npz is rewritten whole, through a temporary file renamed over it.
    """
    clips, stories, seed, size, fps = _world(latents_dir)
    src = pipeline.PreencodedSource(latents_dir)
    if len(src) != len(clips):
        raise ValueError(f"{latents_dir}: {len(src)} examples for {len(clips)} manifest rows")
    todo = []
    for i, f in enumerate(src.files):
        with np.load(str(f)) as z:
            if "cue" not in z.files:
                todo.append(i)
    levels = len(CUE_SHIFTS)
    for first in tqdm(range(0, len(todo), chunk), desc="cue frames", unit="chunk"):
        part = todo[first:first + chunk]
        stored, frames = [], []
        for i in part:
            with np.load(str(src.files[i])) as z:   # as stored (text in float16), to be written back unchanged
                stored.append({n: z[n] for n in z.files})
            (index, story), target = stories[os.path.basename(clips[i].video)], len(clips[i].ranges) - 1
            behind = int(stored[-1]["context_shot"][-1])
            frames += [shapes.render_shot(s, frames=1, size=size)[0]
                       for s in cue_shots(story, target, behind, (seed, index, target), size)]
        pixels = pipeline.resize(_through_codec(np.stack(frames), fps), cfg.video.height, cfg.video.width,
                                 cfg.data.resize)
        cues = pipeline.encode_frames(encode_video, pixels).astype(np.float32)
        for k, (i, arrays) in enumerate(zip(part, stored)):
            path = str(src.files[i])
            tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
            with open(tmp, "wb") as f:
                np.savez(f, **arrays, cue=cues[k * levels:(k + 1) * levels])
            os.replace(tmp, path)
    return len(todo)


def main(argv):
    del argv

    def body(cfg):
        n = add_cues(cfg.data.latents_dir, cfg, pipeline.encoders(cfg)[0])
        return f"added cue frames ({len(CUE_SHIFTS)} levels) to {n} examples in {cfg.data.latents_dir}"

    return data_command("shapes_cues", "latents_dir", "set --config.data.latents_dir to a pre-encoded Shapes world",
                        body)


if __name__ == "__main__":
    define_config_flag()
    app.run(main)
