"""The Shapes world: synthetic multi-shot stories whose captions say exactly what is drawn.

Each shot is one plain palette background with one filled palette shape on it;
shots are separated by hard cuts. A shot caption is exactly

    <framing> of <character> <motion> on a <colour> background

with <character> either `a <colour> <shape>` or `the same character`, which
means the most recently named character of the story: its colour and shape are
then only in the earlier shots' pictures, so only the global context cache can
carry them. Global captions are generic and never name a colour or a shape.

Rules that make every caption checkable from pixels (eval/shapes.py):
* background and character colours differ within a shot;
* consecutive shots have different backgrounds, so every cut is visible;
* a new character differs from the previous one in colour or shape;
* `wide shot`: shape size H/4; `close-up`: H/2 (size = the shape's height);
* moving: the centre travels 3/8 of the frame in a straight line over the shot
  and the shape stays inside the frame; `standing still`: the centre is fixed.

Stories are a pure function of (seed, index). `write_dataset` writes them as
the reference manifest (mp4 + caption JSON + CSV, DESIGN.md section 9) that
data/manifest.py and data/pipeline.py read.

    python -m shotstream_jax.data.shapes --out=DIR --num_stories=100 --seed=0
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import re
import tempfile

import numpy as np

from shotstream_jax.data.manifest import write_manifest

PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 200, 40),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
FRAMINGS = {"wide shot": 0.25, "close-up": 0.5}   # shape height / frame height
MOTIONS = {"moving left": (-1, 0), "moving right": (1, 0), "moving up": (0, -1), "moving down": (0, 1),
           "standing still": (0, 0)}               # (dx, dy) direction in image coordinates
SAME = "the same character"
TRAVEL = 0.375                                     # centre travel of a moving shape, in frame sizes
GLOBAL_ONE = ("A story about one character.", "A short story with one character.",
              "One character, several shots.")
GLOBAL_MANY = ("A story about a few characters.", "A short story with several characters.",
               "Characters in several shots.")

HEIGHT = WIDTH = 64
FPS = 16
SHOT_FRAMES = 33            # 1 + 4 * 8: nine latent frames, three 3-frame chunks
MIN_SHOTS, MAX_SHOTS = 2, 5
P_SAME = 0.75               # probability that a later shot keeps the character

_CAPTION = re.compile(r"(wide shot|close-up) of (the same character|a (\w+) (\w+)) "
                      r"(moving left|moving right|moving up|moving down|standing still) on a (\w+) background")


@dataclasses.dataclass(frozen=True)
class Shot:
    framing: str
    colour: str          # the character's colour (resolved even when the caption says `the same character`)
    shape: str
    motion: str
    background: str
    same: bool           # caption says `the same character`
    start: tuple[float, float]   # centre (x, y) in pixels at the first frame
    end: tuple[float, float]     # centre at the last frame

    @property
    def caption(self) -> str:
        who = SAME if self.same else f"a {self.colour} {self.shape}"
        return f"{self.framing} of {who} {self.motion} on a {self.background} background"


@dataclasses.dataclass(frozen=True)
class Story:
    global_caption: str
    shots: tuple[Shot, ...]

    @property
    def captions(self) -> dict:
        """The reference caption JSON: {"global_caption": ..., "shot1": ..., ...}."""
        return {"global_caption": self.global_caption,
                **{f"shot{i + 1}": s.caption for i, s in enumerate(self.shots)}}


def _pre_tokenizer():
    from tokenizers import pre_tokenizers
    return pre_tokenizers.Whitespace()   # words and runs of punctuation: "character.shot0:wide" -> 5 pieces


def vocabulary() -> list[str]:
    """Every token of the world's prompts (text.shot_prompt joins global caption, `shot{i}:` and caption)."""
    pre = _pre_tokenizer()
    texts = (*GLOBAL_ONE, *GLOBAL_MANY, *FRAMINGS, *MOTIONS, SAME, *COLOURS, *SHAPES, "of a on background",
             *(f"shot{i}:" for i in range(MAX_SHOTS)))
    return sorted({piece for t in texts for piece, _ in pre.pre_tokenize_str(t.lower())})


def write_tokenizer(path: str) -> str:
    """Write the world's word-level tokenizer as a `tokenizers` tokenizer.json (what text.Tokenizer loads).

    Ids: <pad> 0, </s> 1 (appended to every prompt, as umT5's), <unk> 2, then the sorted vocabulary;
    prompts are lower-cased. Returns `path`.
    """
    from tokenizers import Tokenizer, models, normalizers, processors
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    vocab.update({w: i + 3 for i, w in enumerate(vocabulary())})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = _pre_tokenizer()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tmp = path + ".tmp"
    tok.save(tmp)
    os.replace(tmp, path)
    return path


def parse_caption(caption: str) -> dict:
    """A shot caption -> {framing, colour, shape, motion, background, same}; ValueError when off-grammar.

    colour/shape are None for `the same character`.
    """
    m = _CAPTION.fullmatch(caption.strip())
    if not m or m.group(6) not in PALETTE or (m.group(3) and (m.group(3) not in PALETTE or m.group(4) not in SHAPES)):
        raise ValueError(f"{caption!r} is not a Shapes-world caption "
                         f"('<framing> of <character> <motion> on a <colour> background')")
    return dict(framing=m.group(1), colour=m.group(3), shape=m.group(4), motion=m.group(5),
                background=m.group(6), same=m.group(2) == SAME)


def resolve_captions(captions) -> list[dict]:
    """Parsed shot captions with `the same character` replaced by the last named character's colour and shape."""
    out, who = [], None
    for i, c in enumerate(captions):
        p = parse_caption(c)
        if p["same"]:
            if who is None:
                raise ValueError(f"shot {i + 1} says {SAME!r} but no earlier shot names a character")
            p["colour"], p["shape"] = who
        who = (p["colour"], p["shape"])
        out.append(p)
    return out


def centre_range(framing: str, size: int) -> tuple[float, float]:
    """The centre coordinates (either axis) that keep the whole shape of `framing` inside the frame."""
    half = FRAMINGS[framing] * size / 2
    return half + 1, size - half - 1


def centre_path(rng: np.random.Generator, framing: str, motion: str, size: int):
    """Start and end centre of the shape: inside the frame, travelling TRAVEL * frame when moving."""
    lo, hi = centre_range(framing, size)
    dx, dy = MOTIONS[motion]
    travel = TRAVEL * size if (dx or dy) else 0.0

    def axis(d):
        if d == 0:
            c = rng.uniform(lo, hi)
            return c, c
        a = rng.uniform(lo, hi - travel)           # start of the movement, before orientation
        return (a, a + travel) if d > 0 else (a + travel, a)

    (x0, x1), (y0, y1) = axis(dx), axis(dy)
    return (float(x0), float(y0)), (float(x1), float(y1))


def make_story(seed: int, index: int, size: int = HEIGHT) -> Story:
    """Story `index` of the world with seed `seed` (a pure function of both)."""
    rng = np.random.default_rng([seed, index])
    n = int(rng.integers(MIN_SHOTS, MAX_SHOTS + 1))
    shots, who, bg, named = [], None, None, 0
    for i in range(n):
        same = i > 0 and rng.random() < P_SAME
        if not same:
            while True:
                new = (COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))])
                if new != who:
                    break
            who, named = new, named + 1
        bg = str(rng.choice([c for c in COLOURS if c != who[0] and c != bg]))
        framing = str(rng.choice(list(FRAMINGS)))
        motion = str(rng.choice(list(MOTIONS)))
        start, end = centre_path(rng, framing, motion, size)
        shots.append(Shot(framing, who[0], who[1], motion, bg, same, start, end))
    glob = GLOBAL_ONE if named == 1 else GLOBAL_MANY
    return Story(str(glob[rng.integers(len(glob))]), tuple(shots))


def shape_mask(shape: str, cx: float, cy: float, side: float, size: int, supersample: int = 4) -> np.ndarray:
    """Coverage f32[size, size] in [0, 1] of a filled upright shape of height `side` centred at (cx, cy)."""
    s = supersample
    g = (np.arange(size * s) + 0.5) / s
    y, x = g[:, None], g[None, :]
    h = side / 2
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= h * h
    elif shape == "square":
        inside = (np.abs(x - cx) <= h) & (np.abs(y - cy) <= h)
    elif shape == "triangle":   # apex up, base at the bottom, as wide as it is tall
        inside = (y <= cy + h) & (np.abs(x - cx) <= (y - (cy - h)) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    return inside.reshape(size, s, size, s).mean((1, 3)).astype(np.float32)


def render_shot(shot: Shot, frames: int = SHOT_FRAMES, size: int = HEIGHT) -> np.ndarray:
    """uint8[frames, size, size, 3]: the shot, the centre moving linearly from `start` to `end`."""
    bg = np.asarray(PALETTE[shot.background], np.float32)
    fg = np.asarray(PALETTE[shot.colour], np.float32)
    side = FRAMINGS[shot.framing] * size
    out = np.empty((frames, size, size, 3), np.uint8)
    for f in range(frames):
        a = f / max(frames - 1, 1)
        cx = shot.start[0] + a * (shot.end[0] - shot.start[0])
        cy = shot.start[1] + a * (shot.end[1] - shot.start[1])
        m = shape_mask(shot.shape, cx, cy, side, size)[..., None]
        out[f] = np.round(bg * (1 - m) + fg * m).astype(np.uint8)
    return out


def render_story(story: Story, shot_frames: int = SHOT_FRAMES, size: int = HEIGHT) -> np.ndarray:
    """uint8[n_shots * shot_frames, size, size, 3]: the shots back to back (hard cuts)."""
    return np.concatenate([render_shot(s, shot_frames, size) for s in story.shots])


def write_video(path: str, frames: np.ndarray, fps: int = FPS) -> None:
    """H.264 mp4 at near-lossless quality (crf 10; yuv420p so that ordinary players read it), atomically."""
    import imageio.v2 as imageio
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".mp4", dir=d)
    os.close(fd)
    os.chmod(tmp, 0o644)
    try:
        w = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p",
                               macro_block_size=1, quality=None, output_params=["-crf", "10"],
                               ffmpeg_log_level="error")
        for f in frames:
            w.append_data(f)
        w.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_story_video(job) -> None:
    """Pool job (path, seed, index, shot_frames, size, fps): render one story and write its mp4."""
    video, seed, i, shot_frames, size, fps = job
    write_video(video, render_story(make_story(seed, i, size), shot_frames, size), fps)


def write_dataset(out_dir: str, num_stories: int, seed: int = 0, shot_frames: int = SHOT_FRAMES,
                  size: int = HEIGHT, fps: int = FPS, prefixes: bool = True, progress: bool = False,
                  workers: int = 1) -> str:
    """Write stories 0..num_stories-1 of `seed` as mp4 + caption JSON + manifest.csv; returns the manifest path.

    `prefixes`: one manifest row per prefix of 2..n shots of each story (the training pipeline makes the
    last shot of a row its target, so every later shot becomes a next-shot example); else one row per story.
    Also writes `stories.json` (seed, frame size and every story: video name, global caption, shot captions)
    for generation, evaluation and cue frames (data/shapes_cues.py), and the world's `tokenizer.json`.
    Existing videos are kept, so an interrupted run continues.
    `workers` > 1 renders and encodes the videos in that many processes (the same files: a story depends
    only on seed and index).
    """
    os.makedirs(out_dir, exist_ok=True)
    names = [f"{i:05d}" for i in range(num_stories)]
    jobs = [(os.path.join(out_dir, n + ".mp4"), seed, i, shot_frames, size, fps) for i, n in enumerate(names)]
    jobs = [j for j in jobs if not os.path.exists(j[0])]
    done = num_stories - len(jobs)
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 and len(jobs) > 1 else None
    try:
        for _ in (pool.imap_unordered(_write_story_video, jobs, chunksize=8) if pool else map(_write_story_video, jobs)):
            done += 1
            if progress and (done % 50 == 0 or done == num_stories):
                print(f"shapes: {done}/{num_stories} videos in {out_dir}", flush=True)
    finally:
        if pool:
            pool.terminate()
    rows, stories = [], []
    for i, name in enumerate(names):
        story = make_story(seed, i, size)
        with open(os.path.join(out_dir, name + ".json"), "w") as f:
            json.dump(story.captions, f, indent=1)
        ranges = [[k * shot_frames, (k + 1) * shot_frames] for k in range(len(story.shots))]
        for n in range(MIN_SHOTS if prefixes else len(ranges), len(ranges) + 1):
            rows.append([len(story.shots), name + ".json", name + ".mp4", ranges[:n]])
        stories.append(dict(video=name + ".mp4", global_caption=story.global_caption,
                            shots=[s.caption for s in story.shots]))
    with open(os.path.join(out_dir, "stories.json"), "w") as f:
        json.dump(dict(seed=seed, shot_frames=shot_frames, fps=fps, size=size, stories=stories), f, indent=1)
    write_tokenizer(os.path.join(out_dir, "tokenizer.json"))
    return write_manifest(os.path.join(out_dir, "manifest.csv"), rows)


def main(argv):
    del argv
    from absl import flags
    f = flags.FLAGS
    path = write_dataset(f.out, f.num_stories, f.seed, f.shot_frames, f.size, f.fps, f.prefixes, progress=True,
                         workers=f.workers)
    print(path)


if __name__ == "__main__":
    from absl import app, flags
    flags.DEFINE_string("out", None, "Folder to write the stories to (videos, caption JSONs, manifest.csv).")
    flags.DEFINE_integer("num_stories", 100, "Number of stories (story i is a pure function of --seed and i).")
    flags.DEFINE_integer("seed", 0, "World seed; held-out evaluation stories use a seed not used in training.")
    flags.DEFINE_integer("shot_frames", SHOT_FRAMES, "Pixel frames per shot (1 + 4k for the Wan VAE).")
    flags.DEFINE_integer("size", HEIGHT, "Frame height and width in pixels.")
    flags.DEFINE_integer("fps", FPS, "Frames per second of the videos.")
    flags.DEFINE_integer("workers", 1, "Processes rendering and encoding videos (the files do not depend on it).")
    flags.DEFINE_bool("prefixes", True, "One manifest row per 2..n-shot prefix of each story (training data).")
    flags.mark_flag_as_required("out")
    app.run(main)
