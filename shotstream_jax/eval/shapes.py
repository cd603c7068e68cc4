"""Exact metrics for Shapes-world stories (data/shapes.py), read from decoded pixels only.

Every pixel is labelled with its nearest palette colour (or `none` when it is
far from all of them). Per frame: the background is the most common label, the
character is the largest connected region of the most common other label.
Per shot (majority or median over its frames):
  * background colour, character colour;
  * shape: an upright triangle has its mass low in its bounding box (centroid
    at 2/3 of the height, circles and squares at 1/2); otherwise how much of
    the box the region fills tells a square (1) from a circle (pi/4);
  * framing from the region's height (wide shot H/4, close-up H/2; split at 3H/8);
  * motion from the centroid's displacement between the first and last frames
    (standing still when under H/8, else the dominant axis and its sign).
Across shots:
  * `same_character`: a `the same character` shot shows the colour and shape
    of the last named character (memory);
  * `consistency`: it shows what the pictures showed in that character's
    earlier shots (whatever that was);
  * `cut`: one item per shot boundary (a cut there) and one per shot (no cut
    inside it); a cut is a frame change where over half the pixels change by
    more than CUT_DISTANCE;
  * `smoothness`: fraction of consecutive frames inside shots that change
    under a tenth of the pixels and move the character's centroid under H/16.

Shots are taken as equal parts of the video (the world and the generator
both make equal-length shots).

    python -m shotstream_jax.eval.shapes --stories=DIR/stories.json --videos=DIR [--output=metrics.json]
    python -m shotstream_jax.eval.shapes --stories=HELDOUT/stories.json --videos=OUT --model=MODEL_DIR

    python -m shotstream_jax.eval.shapes --stories=... --videos=OUT --teacher=RUN/teacher/export \
        --encoder_dir=RUN/text/export

    python -m shotstream_jax.eval.shapes --stories=HELDOUT/stories.json --videos=OUT --roundtrip=MODEL_DIR

With --model (a student) or --teacher the stories are first generated into
--videos (videos already there are kept), then scored. With --roundtrip the
stories' own videos are passed through that model directory's VAE instead.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from shotstream_jax.data import shapes

_RGB = np.asarray([shapes.PALETTE[c] for c in shapes.COLOURS], np.float32)
NONE = len(shapes.COLOURS)        # label of pixels far from every palette colour
MAX_DISTANCE = 90.0               # RGB distance beyond which a pixel has no palette colour
CUT_DISTANCE = 60.0
MIN_AREA = 0.005                  # smallest character region, as a fraction of the frame
TRIANGLE_LOW = 0.58               # centroid depth in the bounding box above which a region is a triangle
SQUARE_FILL = 0.89                # fill ratio above which a non-triangle is a square

PER_SHOT = ("background", "character_colour", "character_shape", "framing", "motion")
METRICS = PER_SHOT + ("same_character", "consistency", "cut", "smoothness")


def palette_labels(frames: np.ndarray) -> np.ndarray:
    """uint8[..., 3] -> int[...]: index of the nearest palette colour, NONE when none is within MAX_DISTANCE."""
    d = np.linalg.norm(frames[..., None, :].astype(np.float32) - _RGB, axis=-1)
    lab = d.argmin(-1)
    return np.where(d.min(-1) <= MAX_DISTANCE, lab, NONE)


@dataclasses.dataclass
class FrameReading:
    background: int
    colour: int                          # NONE when no character was found
    fill: float = np.nan                 # region area / bounding-box area
    low: float = np.nan                  # centroid depth in the bounding box, 0 top .. 1 bottom
    height: float = np.nan               # bounding-box height in pixels
    centre: tuple = (np.nan, np.nan)     # (x, y) centroid


def read_frame(labels: np.ndarray) -> FrameReading:
    """Background and character of one labelled frame int[H, W]; both NONE when no pixel is near the palette."""
    counts = np.bincount(labels.ravel(), minlength=NONE + 1)[:NONE]
    if not counts.any():
        return FrameReading(NONE, NONE)
    bg = int(counts.argmax())
    counts[bg] = 0
    fg = int(counts.argmax())
    if counts[fg] < MIN_AREA * labels.size:
        return FrameReading(bg, NONE)
    regions, n = ndimage.label(labels == fg)
    sizes = np.bincount(regions.ravel())[1:]
    ys, xs = np.nonzero(regions == 1 + sizes.argmax())
    if len(ys) < MIN_AREA * labels.size:
        return FrameReading(bg, NONE)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    return FrameReading(bg, fg, len(ys) / (h * w), (ys.mean() - ys.min() + 0.5) / h, float(h),
                        (xs.mean() + 0.5, ys.mean() + 0.5))


def _majority(values) -> Optional[int]:
    values = [v for v in values if v != NONE]
    return int(np.bincount(values).argmax()) if values else None


def read_shot(frames: np.ndarray) -> dict:
    """uint8[T, H, W, 3] of one shot -> {background, character_colour, character_shape, framing, motion}.

    Also `frames` (the FrameReadings) for the smoothness metric. Names are the
    caption words; None where nothing could be read.
    """
    size = frames.shape[1]
    reads = [read_frame(l) for l in palette_labels(frames)]
    bg, fg = _majority([r.background for r in reads]), _majority([r.colour for r in reads])
    seen = [r for r in reads if r.colour == fg] if fg is not None else []
    out = dict(background=shapes.COLOURS[bg] if bg is not None else None,
               character_colour=shapes.COLOURS[fg] if fg is not None else None,
               character_shape=None, framing=None, motion=None, frames=reads)
    if not seen:
        return out
    if np.median([r.low for r in seen]) > TRIANGLE_LOW:
        out["character_shape"] = "triangle"
    else:
        out["character_shape"] = "square" if np.median([r.fill for r in seen]) > SQUARE_FILL else "circle"
    out["framing"] = "close-up" if np.median([r.height for r in seen]) > 0.375 * size else "wide shot"
    k = max(1, len(seen) // 8)
    move = np.mean([r.centre for r in seen[-k:]], 0) - np.mean([r.centre for r in seen[:k]], 0)
    if np.abs(move).max() < size / 8:
        out["motion"] = "standing still"
    elif abs(move[0]) >= abs(move[1]):
        out["motion"] = "moving right" if move[0] > 0 else "moving left"
    else:
        out["motion"] = "moving down" if move[1] > 0 else "moving up"
    return out


def cut_frames(frames: np.ndarray) -> np.ndarray:
    """bool[T-1]: True where frame i+1 is cut from frame i (over half the pixels change by > CUT_DISTANCE)."""
    d = np.linalg.norm(np.diff(frames.astype(np.float32), axis=0), axis=-1)
    return (d > CUT_DISTANCE).mean((1, 2)) > 0.5


def score_story(frames: np.ndarray, captions: Sequence[str]) -> dict:
    """uint8[T, H, W, 3] and its shot captions -> {metric: list of 0/1 (or fractions for smoothness)}.

    Raises ValueError when a caption is off-grammar or T does not split into equal shots.
    """
    truth = shapes.resolve_captions(captions)
    n = len(truth)
    if frames.ndim != 4 or len(frames) % n or len(frames) // n < 2:
        raise ValueError(f"video of shape {frames.shape} does not split into {n} equal shots of >= 2 frames")
    length = len(frames) // n
    shots = [read_shot(frames[i * length:(i + 1) * length]) for i in range(n)]
    key = dict(background="background", character_colour="colour", character_shape="shape", framing="framing",
               motion="motion")
    scores = {m: [float(s[m] == t[key[m]]) for s, t in zip(shots, truth)] for m in PER_SHOT}
    scores["same_character"], scores["consistency"] = [], []
    first = None            # what the pictures showed when the current character was named
    for s, t in zip(shots, truth):
        seen = (s["character_colour"], s["character_shape"])
        if t["same"]:
            scores["same_character"].append(float(seen == (t["colour"], t["shape"])))
            scores["consistency"].append(float(seen == first and None not in seen))
        else:
            first = seen
    cuts = cut_frames(frames)
    boundary = np.zeros(len(cuts), bool)
    boundary[length - 1::length] = True
    scores["cut"] = [float(c) for c in cuts[boundary]] + [
        float(not cuts[i * length:(i + 1) * length - 1].any()) for i in range(n)]
    smooth = []
    for i, s in enumerate(shots):
        f = frames[i * length:(i + 1) * length].astype(np.float32)
        changed = (np.linalg.norm(np.diff(f, axis=0), axis=-1) > CUT_DISTANCE).mean((1, 2))
        r = s["frames"]
        jump = [np.hypot(b.centre[0] - a.centre[0], b.centre[1] - a.centre[1])
                if a.colour == b.colour != NONE else 0.0 for a, b in zip(r[:-1], r[1:])]
        ok = (changed < 0.1) & (np.asarray(jump) < frames.shape[1] / 16)
        smooth.append(float(ok.mean()))
    scores["smoothness"] = smooth
    return scores


def score(pairs) -> dict:
    """Iterable of (frames, captions) -> {metric: mean over all items, metric + '_n': item count}.

    Per-shot metrics are also split into `<metric>/named` and `<metric>/same` (shots that name their
    character vs `the same character` shots).
    """
    items: dict[str, list] = {}
    for frames, captions in pairs:
        s = score_story(frames, captions)
        same = [t["same"] for t in shapes.resolve_captions(captions)]
        for m, v in s.items():
            items.setdefault(m, []).extend(v)
        for m in ("character_colour", "character_shape"):
            for v, is_same in zip(s[m], same):
                items.setdefault(f"{m}/{'same' if is_same else 'named'}", []).append(v)
    out = {}
    for m, v in items.items():
        out[m] = float(np.mean(v)) if v else float("nan")
        out[m + "_n"] = len(v)
    return out


def load_stories(path: str) -> list[dict]:
    """A stories file written by data.shapes.write_dataset: [{video, global_caption, shots}]."""
    try:
        with open(path) as f:
            obj = json.load(f)
        stories = obj["stories"]
        for s in stories:
            if not isinstance(s.get("video"), str) or not isinstance(s.get("shots"), list):
                raise KeyError("each story needs 'video' and 'shots'")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a Shapes stories file ({e}); write one with "
                         f"python -m shotstream_jax.data.shapes") from None
    return stories


def evaluate(stories_path: str, videos_dir: str, limit: int = 0) -> dict:
    """Score the videos in `videos_dir` named by the stories file against their captions."""
    from shotstream_jax.video_io import read_video
    stories = load_stories(stories_path)[:limit or None]

    def pairs():
        for s in stories:
            path = os.path.join(videos_dir, s["video"])
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: no video for story {s['video']} of {stories_path}")
            yield read_video(path)[0], s["shots"]

    return score(pairs())


def generate_videos(pipe, stories_path: str, out_dir: str, seed: int = 0, limit: int = 0) -> None:
    """Generate every story of a stories file with `pipe` (a ShotStream) into `out_dir`, skipping existing videos."""
    from tqdm import tqdm
    from shotstream_jax.video_io import VideoWriter
    os.makedirs(out_dir, exist_ok=True)
    for s in tqdm(load_stories(stories_path)[:limit or None], desc="generate", unit="story"):
        path = os.path.join(out_dir, s["video"])
        if os.path.exists(path):
            continue
        session = pipe.session(s["global_caption"], seed=seed)
        with VideoWriter(path, fps=pipe.fps) as w:
            for prompt in s["shots"]:
                for frames in session.next_shot(prompt):
                    w.write(frames)


def roundtrip_videos(model_dir: str, stories_path: str, out_dir: str, limit: int = 0) -> None:
    """The stories' own videos (beside the stories file) through the VAE of `model_dir` into `out_dir`.

    Each shot is encoded and decoded alone, as generation decodes it (the decoder's cache starts afresh
    every shot), so scoring `out_dir` gives the VAE's ceiling on every metric. Existing videos are kept.
    """
    from flax import nnx
    from tqdm import tqdm
    from shotstream_jax import model_dir as model_dir_lib
    from shotstream_jax.pipeline import from_uint8, to_uint8
    from shotstream_jax.video_io import VideoWriter, read_video
    _, _, vae, _ = model_dir_lib.load_pipeline(model_dir)
    roundtrip = nnx.jit(lambda m, x: to_uint8(m.decode(m.encode(from_uint8(x)[None]))[0]))
    os.makedirs(out_dir, exist_ok=True)
    src = os.path.dirname(os.path.abspath(stories_path))
    for s in tqdm(load_stories(stories_path)[:limit or None], desc="roundtrip", unit="story"):
        path = os.path.join(out_dir, s["video"])
        if os.path.exists(path):
            continue
        video = os.path.join(src, s["video"])
        if not os.path.isfile(video):
            raise FileNotFoundError(f"{video}: no video for story {s['video']} of {stories_path}")
        frames, fps = read_video(video)
        n = len(frames) // len(s["shots"])
        with VideoWriter(path, fps=round(fps)) as w:
            for i in range(len(s["shots"])):
                w.write(np.asarray(roundtrip(vae, frames[i * n:(i + 1) * n])))


def teacher_story(cfg, sample_shot, encode_video, encode_text, decode, global_caption: str,
                  captions: Sequence[str], key, global_context: bool = True) -> list[np.ndarray]:
    """One story drawn by a bidirectional teacher, shot by shot: uint8 frames [shot_frames, H, W, 3] per shot.

    Each shot is one example as training builds it (`data.pipeline.build_example`), from the decoded
    pixels of the story's own earlier shots: `context.sample_context` picks cfg.shotstream.context_frames
    of them, each VAE-encoded alone. The first shot has the context-dropout form the teacher learned
    first shots from (zero context latents, every context frame in RoPE shot 0).
    `sample_shot(ex, key) -> x0 [T, h, w, C]`; `decode(x0) -> [-1, 1] frames [shot_frames, H, W, 3]`.
    """
    import jax
    from shotstream_jax.data import pipeline
    from shotstream_jax.pipeline import to_uint8
    from shotstream_jax.text import shot_prompt
    s, max_shots = cfg.shotstream, cfg.data.max_shots
    if len(captions) > max_shots:
        raise ValueError(f"a story of {len(captions)} shots is longer than data.max_shots={max_shots}")
    text = np.zeros((max_shots, cfg.model.text_len, cfg.model.text_dim), np.float32)
    text[:len(captions)] = encode_text([shot_prompt(global_caption, i, c) for i, c in enumerate(captions)])
    shots: list[np.ndarray] = []
    for k in range(len(captions)):
        if shots and global_context:
            n = len(shots[0])
            idx, ctx_shot = pipeline.context_frame_indices([(i * n, (i + 1) * n) for i in range(k)],
                                                           s.context_frames)
            history = np.concatenate(shots)[idx].astype(np.float32) / 127.5 - 1.0
            context = pipeline.encode_frames(encode_video, history)
        else:
            context, ctx_shot = None, np.zeros(s.context_frames, np.int32)
        ex = dict(context=context, context_shot=ctx_shot, target_shot=np.int32(k), text=text)
        x0 = sample_shot(ex, jax.random.fold_in(key, k))
        shots.append(np.asarray(to_uint8(decode(x0))))
    return shots


def load_teacher(cfg):
    """A teacher stage's export and its encoders, ready to sample shots as `teacher_story` asks.

    cfg: a Shapes config with train.teacher_dir (a teacher stage's export/) and data.encoder_dir (the
    VAE and text encoder's model directory); the teacher samples with train.ode_steps Euler steps and
    CFG train.ode_guidance against `train.stages.negative_embedding`, as the ODE pairs do.
    Returns (cfg with the teacher's own model section, sample(ex, key) -> x0 [T, h, w, C] (a missing
    context as zeros: one compile for every shot), decode(x0) -> [-1, 1] frames, encode_video, encode_text).
    """
    import jax
    import ml_collections
    from flax import nnx
    from shotstream_jax import model_dir, sharding
    from shotstream_jax.data import pipeline
    from shotstream_jax.train import stages
    if not cfg.train.teacher_dir or not cfg.data.encoder_dir:
        raise ValueError("loading a teacher needs train.teacher_dir and data.encoder_dir")
    # The teacher's own architecture (its config.json), whatever the config's model section says.
    cfg = cfg.copy_and_resolve_references()
    cfg.model = ml_collections.ConfigDict(dataclasses.asdict(model_dir.saved_dit_config(cfg.train.teacher_dir)))
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    graphdef = stages.Net(cfg, "all").full_graphdef
    params = stages.dit_params(cfg, mesh, cfg.train.teacher_dir, cfg.train.seed)
    uncond = stages.negative_embedding(cfg)
    _, _, vae, text_encoder = model_dir.load_pipeline(cfg.data.encoder_dir)
    encode_video, encode_text = pipeline.encoders_of(vae, text_encoder)
    s = cfg.shotstream
    sf = vae.cfg.spatial_factor
    frame = (cfg.video.height // sf, cfg.video.width // sf, vae.cfg.z_dim)

    @jax.jit
    def teacher_sample(params, ex, key):
        return stages.ode_trajectory(cfg, nnx.merge(graphdef, params), ex, key, uncond)[1]

    def sample(ex, key):  # the target's length from ex (a whole shot when absent); no context: zeros
        shape = np.shape(ex["target"]) if ex.get("target") is not None else (s.shot_latent_frames,) + frame
        context = np.zeros((s.context_frames,) + frame, np.float32) if ex["context"] is None else ex["context"]
        return teacher_sample(params, dict(ex, context=context, target=np.zeros(shape, np.float32)), key)

    decode_jit = nnx.jit(lambda m, z: m.decode(m.cfg.denormalize(z[None]))[0])
    return cfg, sample, lambda z: decode_jit(vae, z), encode_video, encode_text


def generate_teacher_videos(cfg, stories_path: str, out_dir: str, seed: int = 0, limit: int = 0,
                            global_context: bool = True) -> None:
    """`teacher_story` (with `global_context`) for every story of a stories file into `out_dir` (existing
    videos are kept); cfg as `load_teacher` asks."""
    import jax
    from tqdm import tqdm
    from shotstream_jax.video_io import VideoWriter
    cfg, sample, decode, encode_video, encode_text = load_teacher(cfg)
    os.makedirs(out_dir, exist_ok=True)
    for i, st in enumerate(tqdm(load_stories(stories_path)[:limit or None], desc="teacher", unit="story")):
        path = os.path.join(out_dir, st["video"])
        if os.path.exists(path):
            continue
        shots = teacher_story(cfg, sample, encode_video, encode_text, decode, st["global_caption"], st["shots"],
                              jax.random.fold_in(jax.random.PRNGKey(seed), i), global_context)
        with VideoWriter(path, fps=cfg.video.fps) as w:
            for frames in shots:
                w.write(frames)


def save_metrics(path: str, metrics: dict) -> None:
    """`metrics` as JSON at `path`, written whole or not at all (a temp file, then renamed)."""
    with open(path + ".tmp", "w") as fh:
        json.dump(metrics, fh, indent=1)
    os.replace(path + ".tmp", path)


def main(argv):
    del argv
    from absl import app, flags
    f = flags.FLAGS
    if f.teacher and not f.encoder_dir:
        raise app.UsageError("--teacher needs --encoder_dir (the model directory of the VAE and text encoder)")
    if sum(map(bool, (f.model, f.teacher, f.roundtrip))) > 1:
        raise app.UsageError("give at most one of --model, --teacher and --roundtrip")
    if f.roundtrip:
        roundtrip_videos(f.roundtrip, f.stories, f.videos, f.limit)
    elif f.model:
        from shotstream_jax import ShotStream
        pipe = ShotStream.load(None if f.model == "default" else f.model)
        if f.no_shot_phase:   # ablation: the RoPE shot-discontinuity phase removed at inference
            pipe.shot_theta = 0.0
        if f.no_global_context:  # ablation: every shot starts with the first shot's empty history
            pipe.global_context = False
        generate_videos(pipe, f.stories, f.videos, f.seed, f.limit)
    elif f.teacher:
        from shotstream_jax.config import get_config
        cfg = get_config("shapes", "ode_pairs")
        cfg.train.teacher_dir, cfg.data.encoder_dir = f.teacher, f.encoder_dir
        if f.teacher_steps:
            cfg.train.ode_steps = f.teacher_steps
        generate_teacher_videos(cfg, f.stories, f.videos, f.seed, f.limit,
                                global_context=not f.no_global_context)
    metrics = evaluate(f.stories, f.videos, f.limit)
    for m in sorted(metrics):
        if not m.endswith("_n"):
            print(f"{m:28s} {metrics[m]:.3f}  (n={metrics[m + '_n']})")
    if f.output:
        save_metrics(f.output, metrics)


if __name__ == "__main__":
    from absl import app, flags
    flags.DEFINE_string("stories", None, "stories.json of the Shapes world (python -m shotstream_jax.data.shapes).")
    flags.DEFINE_string("videos", None, "Folder with one video per story, named as the story's 'video' entry.")
    flags.DEFINE_integer("limit", 0, "Score only the first N stories (0: all).")
    flags.DEFINE_string("model", "", "Generate the stories first with this model directory ('default': the "
                        "bundled default model) into --videos.")
    flags.DEFINE_integer("seed", 0, "Generation seed of every story (with --model).")
    flags.DEFINE_bool("no_shot_phase", False, "Generate without the RoPE shot phase (ablation; with --model).")
    flags.DEFINE_bool("no_global_context", False, "Generate every shot without the global context cache of "
                      "earlier shots (memory ablation; with --model), or, with --teacher, without the context "
                      "frames of earlier shots (each shot as the first).")
    flags.DEFINE_string("teacher", "", "Generate the stories first with this bidirectional teacher (a teacher "
                        "stage's export/), shot by shot with many steps and CFG, into --videos.")
    flags.DEFINE_string("encoder_dir", "", "With --teacher: the model directory of the VAE and text encoder "
                        "(the text stage's export/).")
    flags.DEFINE_string("roundtrip", "", "Write the stories' own videos (beside --stories) through the VAE of this "
                        "model directory into --videos, each shot encoded and decoded alone, then score them: the "
                        "VAE's ceiling on every metric.")
    flags.DEFINE_integer("teacher_steps", 0, "With --teacher: Euler steps per shot (0: the ode_pairs config's).")
    flags.DEFINE_string("output", "", "Also write the metrics as JSON here.")
    flags.mark_flags_as_required(["stories", "videos"])
    app.run(main)
