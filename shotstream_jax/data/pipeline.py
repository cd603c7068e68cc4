"""Training examples and the grain pipeline that batches them.

One example is a next-shot problem built from one manifest row: the last shot
is the target, and the context is `context_frames` pixel frames sampled from
the earlier shots by the dynamic rule (DESIGN.md section 5), each encoded as
its own 1-frame clip:

    context      f32[Fc, h, w, 16]   latents of the context frames
    context_shot i32[Fc]             source shot of each context frame
    target       f32[Ft, h, w, 16]   latents of the target shot at its true length (bucketed, below)
    target_shot  i32[]               index of the target shot
    text         f32[P, L, Dt]       prompt embedding of every shot (P = data.max_shots, zero-padded)
    num_shots    i32[]

The target shot keeps its true length as in the reference: a shot of at least
`video.shot_frames` (81) frames is strided by len // 81 and cut to 81, a
shorter one kept, then cut to 4k+1 frames; its latent length is then cut down
to the longest of `data.length_buckets` it fills (multiples of the 3-frame
chunk), so that a handful of compiles serve every batch. Examples are padded
in time to stack and each batch is cut back to its shortest example
(`pad_target`, `trim_batch`). Frames are resized to the training size as the
reference's reader does (stretched, `data.resize="stretch"`), or scaled to
cover and centre-cropped (`"crop"`). The example is a deterministic function
of the row, so the pre-encoded form (`preencode.py`) stores it whole and
training reads it back directly.
"""
from __future__ import annotations

import io
import logging
import os
import tempfile
import threading
from typing import Callable

import grain
import imageio.v2 as imageio
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx
from PIL import Image

from shotstream_jax import context
from shotstream_jax.data import manifest, toy

log = logging.getLogger(__name__)
_NPY_HEADER_LOCK = threading.Lock()

Example = dict[str, np.ndarray]

# The reference's negative prompt (tools/train/config/*.yaml): the unconditional branch of CFG.
NEGATIVE_PROMPT = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
                   "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
                   "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")


def read_video(path: str, num_frames: int) -> np.ndarray:
    """The first `num_frames` frames of a video, uint8[T, H, W, 3]; ValueError when it has fewer.

    A URL (gs://...) is copied to a local temporary file first: ffmpeg reads local files.
    """
    if "://" in path:
        with tempfile.NamedTemporaryFile(suffix=os.path.splitext(path)[1]) as f:
            try:
                f.write(epath.Path(path).read_bytes())
            except OSError as e:
                raise ValueError(f"{path}: unreadable video ({e})") from e
            f.flush()
            return _read_frames(f.name, num_frames, path)
    return _read_frames(path, num_frames, path)


def _read_frames(local: str, num_frames: int, path: str) -> np.ndarray:
    try:
        reader = imageio.get_reader(local)
        frames = []
        for frame in reader:
            frames.append(np.asarray(frame)[..., :3])
            if len(frames) == num_frames:
                break
        reader.close()
    except Exception as e:  # imageio raises many types for broken files
        raise ValueError(f"{path}: unreadable video ({e})") from e
    if len(frames) < num_frames:
        raise ValueError(f"{path}: shot ranges end at frame {num_frames} but the video has {len(frames)}")
    return np.stack(frames)


# Latent frames every example is padded to before batching: 81 pixel frames, the reference's restrict_max_length.
MAX_LATENT_FRAMES = 21


def resize(frames: np.ndarray, height: int, width: int, mode: str = "stretch") -> np.ndarray:
    """uint8[T, H, W, 3] -> f32[T, height, width, 3] in [-1, 1].

    "stretch": straight to height x width (the reference reads videos with
    decord at 480x832); "crop": scale to cover, centre crop (keeps the aspect).
    """
    if mode not in ("stretch", "crop"):
        raise ValueError(f"data.resize must be 'stretch' or 'crop', got {mode!r}")
    _, h, w, _ = frames.shape
    rh, rw, top, left = height, width, 0, 0
    if mode == "crop":
        scale = max(height / h, width / w)
        rh, rw = max(height, round(h * scale)), max(width, round(w * scale))
        top, left = (rh - height) // 2, (rw - width) // 2
    out = np.stack([np.asarray(Image.fromarray(f).resize((rw, rh), Image.BILINEAR))[top:top + height, left:left + width]
                    for f in frames])
    return out.astype(np.float32) / 127.5 - 1.0


def target_frame_indices(start: int, end: int, max_frames: int) -> np.ndarray:
    """Pixel frames of the target shot [start, end), the reference's rule: every (len // max_frames)-th
    frame and at most `max_frames` of them when the shot is that long, then cut to 4k+1 frames."""
    idx = np.arange(start, end)
    if len(idx) >= max_frames:
        idx = idx[::len(idx) // max_frames][:max_frames]
    return idx[:(len(idx) - 1) // 4 * 4 + 1]


def bucket_frames(latent_frames: int, buckets) -> int:
    """The longest bucket (latent frames) that `latent_frames` fills; ValueError when the shot is too short."""
    fits = [b for b in buckets if b <= latent_frames]
    if not fits:
        raise ValueError(f"target shot of {latent_frames} latent frames is shorter than the smallest length "
                         f"bucket {min(buckets)}")
    return max(fits)


def pad_target(ex):
    """Pad `target` (and the ODE states) in time to MAX_LATENT_FRAMES so that examples stack;
    `target_frames` keeps the true length. None (a broken example) and pixel clips (the vae stage) pass through."""
    if ex is None or "target" not in ex:
        return ex
    n = ex["target"].shape[0]
    if n > MAX_LATENT_FRAMES:
        raise ValueError(f"target of {n} latent frames is longer than {MAX_LATENT_FRAMES} (81 pixel frames)")

    def pad(x, axis):  # zeros + one copy: np.pad's bookkeeping was half the input pipeline's time
        shape = list(x.shape)
        shape[axis] = MAX_LATENT_FRAMES
        out = np.zeros(shape, x.dtype)
        out[(slice(None),) * axis + (slice(0, n),)] = x
        return out

    out = dict(ex, target=pad(ex["target"], 0), target_frames=np.int32(n))
    if "ode" in ex:
        out["ode"] = pad(ex["ode"], 1)
    return out


def trim_batch(batch, n: int | None = None):
    """Cut a stacked batch back to its shortest target (or to `n` latent frames): one bucket's length
    per batch (pixel clips: as is)."""
    if "target_frames" not in batch:
        return batch
    n = int(np.min(batch["target_frames"])) if n is None else n
    out = dict(batch, target=batch["target"][:, :n])
    if "ode" in batch:
        out["ode"] = batch["ode"][:, :, :n]
    return out


def context_frame_indices(ranges, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """History shots `ranges` -> (pixel frame indices [budget], source shot [budget]), by `context.sample_context`."""
    picks = context.sample_context([b - a for a, b in ranges], budget)
    idx = np.asarray([ranges[k][0] + i for k, i in picks], np.int64)
    return idx, np.asarray([k for k, _ in picks], np.int32)


def clip_pixels(clip: manifest.Clip, cfg) -> tuple[np.ndarray, np.ndarray]:
    """One clip's decoded frames: (f32[n_ctx + T, H, W, 3] in [-1, 1], context frames' shot int32[n_ctx]).

    The first n_ctx frames are the context frames, the rest the target shot's; ValueError when the clip
    cannot be used. No encoder: `preencode` runs this in worker processes.
    """
    v, s = cfg.video, cfg.shotstream
    ranges = clip.ranges
    frames = read_video(clip.video, ranges[-1][1])
    ctx_idx, ctx_shot = context_frame_indices(ranges[:-1], s.context_frames)
    tgt_idx = target_frame_indices(*ranges[-1], v.shot_frames)
    latent_frames = bucket_frames((len(tgt_idx) - 1) // 4 + 1,
                                  [b for b in cfg.data.length_buckets if b <= s.shot_latent_frames])
    tgt_idx = tgt_idx[:4 * (latent_frames - 1) + 1]
    return resize(frames[np.concatenate([ctx_idx, tgt_idx])], v.height, v.width, cfg.data.resize), ctx_shot


def encode_batched(encode_video: Callable, videos: np.ndarray, max_pixels: int = 1 << 24) -> np.ndarray:
    """Videos of one shape f32[N, T, H, W, 3] -> latents [N, t, h, w, 16], in calls of a fixed batch.

    The batch is the smallest power of two that holds all N, capped at `max_pixels` pixels a call (a
    Wan-size video: one at a time); the last call is padded with zeros. So each video shape compiles a
    handful of times, not once per N, and an accelerator runs a few large calls instead of many small
    ones (the Shapes VAE on an H200: 22 ms a single 37-frame clip, bound by kernel launches).
    """
    n, per_video = len(videos), int(np.prod(videos.shape[1:4]))
    batch, cap = 1, max(1, max_pixels // per_video)
    while batch < n and batch * 2 <= cap:
        batch *= 2
    out = []
    for i in range(0, n, batch):
        part = videos[i:i + batch]
        if len(part) < batch:
            part = np.concatenate([part, np.zeros((batch - len(part),) + part.shape[1:], part.dtype)])
        out.append(np.asarray(encode_video(part))[:n - i])
    return np.concatenate(out)


def encode_frames(encode_video: Callable, frames: np.ndarray) -> np.ndarray:
    """Context frames f32[N, H, W, 3] -> latents [N, h, w, 16]: each frame its own 1-frame video, batched."""
    return encode_batched(encode_video, frames[:, None])[:, 0]


def encode_examples(items, cfg, encode_video: Callable, encode_text: Callable) -> list[Example]:
    """[(clip, pixels, ctx_shot)], `clip_pixels`' outputs -> the example dicts above.

    The VAE sees batches: every context frame of every clip in one call, the target shots of one length
    together (`encode_batched`).
    """
    if not items:
        return []
    ns = [len(ctx_shot) for _, _, ctx_shot in items]
    contexts = np.split(encode_frames(encode_video, np.concatenate([px[:n] for (_, px, _), n in zip(items, ns)])),
                        np.cumsum(ns)[:-1])
    by_length: dict[int, list[int]] = {}
    for i, ((_, px, _), n) in enumerate(zip(items, ns)):
        by_length.setdefault(len(px) - n, []).append(i)
    targets = [None] * len(items)
    for same in by_length.values():
        for i, latents in zip(same, encode_batched(encode_video, np.stack([items[i][1][ns[i]:] for i in same]))):
            targets[i] = latents
    max_shots = cfg.data.max_shots
    out = []
    for (clip, _, ctx_shot), context, target in zip(items, contexts, targets):
        text = np.zeros((max_shots, cfg.model.text_len, cfg.model.text_dim), np.float32)
        text[:min(len(clip.ranges), max_shots)] = encode_text(list(clip.prompts[:max_shots]))
        out.append(dict(context=context.astype(np.float32), context_shot=ctx_shot,
                        target=target.astype(np.float32), target_shot=np.int32(len(clip.ranges) - 1),
                        text=text, num_shots=np.int32(len(clip.ranges))))
    return out


def build_example(clip: manifest.Clip, cfg, encode_video: Callable, encode_text: Callable) -> Example:
    """One manifest clip -> the example dict above; ValueError when the clip cannot be used."""
    return encode_examples([(clip, *clip_pixels(clip, cfg))], cfg, encode_video, encode_text)[0]


def model_encoders(path: str) -> tuple[Callable, Callable]:
    """(encode_video, encode_text) from a full model directory: its Wan VAE (normalised latents) and umT5."""
    from shotstream_jax import model_dir
    _, _, vae, text_encoder = model_dir.load_pipeline(path)
    return encoders_of(vae, text_encoder)


def encoders_of(vae, text_encoder) -> tuple[Callable, Callable]:
    """(encode_video, encode_text) of a loaded VAE and text encoder, as `model_encoders`.

    encode_video: f32[F, H, W, 3] -> [f, h, w, 16], or a batch f32[B, F, H, W, 3] -> [B, f, h, w, 16].
    """
    # cached_partial: the VAE's graph is walked once, not on every call (on a GPU that walk, not the
    # encoder, set the pace of pre-encoding).
    encode = nnx.cached_partial(nnx.jit(lambda m, v: m.cfg.normalize(m.encode(v))), vae)
    # A world's captions repeat across its clips: keep up to 256 MB of their embeddings (Shapes: all of
    # them, where the default 32 missed nearly every time; umT5-XXL: the default 32 prompts).
    per_prompt = text_encoder.text_len * text_encoder.model.cfg.d_model * 4
    text_encoder.cache_size = max(text_encoder.cache_size, (256 << 20) // per_prompt)

    def encode_video(video: np.ndarray) -> np.ndarray:
        video = jnp.asarray(video)
        return np.asarray(encode(video)) if video.ndim == 5 else np.asarray(encode(video[None]))[0]

    def encode_text(prompts: list[str]) -> np.ndarray:
        return np.asarray(text_encoder.encode(list(prompts)))

    return encode_video, encode_text


def encoders(cfg) -> tuple[Callable, Callable]:
    """(encode_video, encode_text) for online encoding and for `preencode`.

    `data.encoder_dir` names a full model directory (shotstream-convert with the
    VAE and umT5); without one the toy size uses the TOY stand-ins of toy.py.
    """
    if cfg.data.encoder_dir:
        return model_encoders(cfg.data.encoder_dir)
    if cfg.size == "toy":
        return toy.toy_encode_video, toy.ToyTextEncoder(cfg.model.text_dim, cfg.model.text_len)
    raise ValueError(f"size {cfg.size!r} needs the Wan VAE and umT5 to encode videos: set --config.data.encoder_dir "
                     f"to a full model directory (shotstream-convert --vae=... --umt5=... --tokenizer=...), "
                     f"ideally once with `python -m shotstream_jax.data.preencode`, then train with "
                     f"--config.data.latents_dir")


class ClipSource:
    """Random-access source: clip i -> example, or None when its video is broken (counted, logged)."""

    def __init__(self, clips, cfg, encode_video, encode_text):
        self.clips, self.cfg = clips, cfg
        self.encode_video, self.encode_text = encode_video, encode_text
        self.broken = 0

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i):
        try:
            return build_example(self.clips[i], self.cfg, self.encode_video, self.encode_text)
        except ValueError as e:
            self.broken += 1
            log.warning("skipping clip %s (%d skipped so far): %s", self.clips[i].video, self.broken, e)
            return None


class PreencodedSource:
    """Random-access source over `preencode.py` output: one .npz per example.

    `keep_in_memory`: keep each example after its first read. For small datasets
    (the Shapes world: 85 MB of latents, 260 MB of ODE pairs) on an accelerator,
    where parsing the .npz files under the header lock, not the step, would set
    the pace. Kept arrays are read-only: every read returns the same example.
    """

    def __init__(self, directory, keep_in_memory: bool = False):
        self.kept = {} if keep_in_memory else None
        d = epath.Path(directory)  # local or gs://
        self.files = sorted(f for f in d.iterdir() if f.name.endswith(".npz") and not f.name.startswith(".")) \
            if d.is_dir() else []
        if not self.files:
            raise FileNotFoundError(f"{directory}: no pre-encoded .npz examples; run shotstream_jax.data.preencode")

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        if self.kept is not None and i in self.kept:
            return self.kept[i]
        with self.files[i].open("rb") as f:
            data = io.BytesIO(f.read())
        # np.load parses each array's header with ast.literal_eval, which is not thread-safe on
        # CPython 3.11 ("AST constructor recursion depth mismatch" under grain's reader threads).
        with _NPY_HEADER_LOCK, np.load(data) as z:
            example = {k: (z[k].astype(np.float32) if z[k].dtype == np.float16 else z[k]) for k in z.files}
        if self.kept is not None:
            for v in example.values():
                v.flags.writeable = False
            self.kept[i] = example
        return example


def manifest_path(cfg, workdir: str) -> str:
    """The manifest the config names; a toy dataset generated in `workdir` when it names none."""
    path = cfg.data.manifest
    if not path:
        toy_dir = os.path.join(workdir, "toy_data")
        path = os.path.join(toy_dir, "manifest.csv")
        if not os.path.exists(path):
            log.info("no data configured: writing a toy dataset to %s", toy_dir)
            path = toy.make_toy_dataset(toy_dir, num_videos=cfg.data.toy_videos, seed=cfg.data.shuffle_seed)
    return path


def source(cfg, workdir: str, min_shots: int = 2):
    """The example source the config names; a generated toy dataset in `workdir` when it names none."""
    if cfg.data.latents_dir:
        return PreencodedSource(cfg.data.latents_dir, keep_in_memory=cfg.data.keep_in_memory)
    clips, _ = manifest.read_manifest(manifest_path(cfg, workdir), min_shots=min_shots)
    return ClipSource(clips, cfg, *encoders(cfg))


class _Rows:
    """Random access to rows [first, first + count) of every global batch of `batch_size` from `ds`."""

    def __init__(self, ds, batch_size: int, first: int, count: int):
        self.ds, self.batch_size, self.first, self.count = ds, batch_size, first, count

    def __len__(self):
        return len(self.ds) // self.batch_size * self.count

    def __getitem__(self, i):
        return self.ds[(i // self.count) * self.batch_size + self.first + i % self.count]


def dataset(src, batch_size: int, seed: int, rows: tuple[int, int] | None = None, num_threads: int = 2):
    """Infinite grain pipeline of stacked batches; reshuffled every epoch.

    `batch_size` is the global batch: batch s holds examples s*B .. s*B+B-1 of
    the shuffled stream, whatever the number of processes. `rows` = (first,
    count) (`sharding.process_rows`) keeps this process's rows of each batch,
    so it only reads its own examples. Broken examples (None) are dropped by
    grain's iterator. Save/restore the position with grain's orbax
    CheckpointHandler (one file per process) or `get_state/set_state`.
    """
    ds = grain.MapDataset.source(src).seed(seed).shuffle().repeat(None)
    first, count = rows or (0, batch_size)
    if count != batch_size:
        ds = grain.MapDataset.source(_Rows(ds, batch_size, first, count))
    # Few decoding threads: video decoding shares the host's cores with the input transfers;
    # num_threads=0 reads in the caller's thread (data.read_threads).
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * count)
                              ).map(pad_target).batch(count).map(trim_batch)
