"""Training examples and the grain pipeline that batches them.

One example is a next-shot problem built from one manifest row: the last shot
is the target, and the context is `context_frames` pixel frames sampled from
the earlier shots by the dynamic rule (DESIGN.md section 5), each encoded as
its own 1-frame clip:

    context      f32[Fc, h, w, 16]   latents of the context frames
    context_shot i32[Fc]             source shot of each context frame
    target       f32[Ft, h, w, 16]   latents of the target shot (Ft = shot_latent_frames)
    target_shot  i32[]               index of the target shot
    text         f32[P, L, Dt]       prompt embedding of every shot (P = data.max_shots, zero-padded)
    num_shots    i32[]

The target shot is brought to exactly `video.shot_frames` pixel frames (every
k-th frame of a long shot, as the reference does, and nearest-frame stretching
of a short one) so that every batch has one shape and the step compiles once.
The example is a deterministic function of the row, so the pre-encoded form
(`preencode.py`) stores it whole and training reads it back directly.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import grain
import imageio.v2 as imageio
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from shotstream_jax import context
from shotstream_jax.data import manifest, toy

log = logging.getLogger(__name__)

Example = dict[str, np.ndarray]

# The reference's negative prompt (tools/train/config/*.yaml): the unconditional branch of CFG.
NEGATIVE_PROMPT = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
                   "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
                   "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")


def read_video(path: str, num_frames: int) -> np.ndarray:
    """The first `num_frames` frames of a video, uint8[T, H, W, 3]; ValueError when it has fewer."""
    try:
        reader = imageio.get_reader(path)
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


def resize_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8[T, H, W, 3] -> f32[T, height, width, 3] in [-1, 1]: scale to cover, centre crop."""
    _, h, w, _ = frames.shape
    scale = max(height / h, width / w)
    rh, rw = max(height, round(h * scale)), max(width, round(w * scale))
    top, left = (rh - height) // 2, (rw - width) // 2
    out = np.stack([np.asarray(Image.fromarray(f).resize((rw, rh), Image.BILINEAR))[top:top + height, left:left + width]
                    for f in frames])
    return out.astype(np.float32) / 127.5 - 1.0


def target_frame_indices(start: int, end: int, n: int) -> np.ndarray:
    """`n` frame indices of the shot [start, end): stride len//n when long enough, else stretched."""
    length = end - start
    if length >= n:
        return start + np.arange(n) * (length // n)
    return start + np.round(np.linspace(0, length - 1, n)).astype(np.int64)


def context_frame_indices(ranges, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """History shots `ranges` -> (pixel frame indices [budget], source shot [budget]), by `context.sample_context`."""
    picks = context.sample_context([b - a for a, b in ranges], budget)
    idx = np.asarray([ranges[k][0] + i for k, i in picks], np.int64)
    return idx, np.asarray([k for k, _ in picks], np.int32)


def build_example(clip: manifest.Clip, cfg, encode_video: Callable, encode_text: Callable) -> Example:
    """One manifest clip -> the example dict above; ValueError when the clip cannot be used."""
    v, s = cfg.video, cfg.shotstream
    ranges = clip.ranges
    frames = read_video(clip.video, ranges[-1][1])
    ctx_idx, ctx_shot = context_frame_indices(ranges[:-1], s.context_frames)
    tgt_idx = target_frame_indices(*ranges[-1], v.shot_frames)
    pixels = resize_crop(frames[np.concatenate([ctx_idx, tgt_idx])], v.height, v.width)
    context = np.concatenate([encode_video(p[None]) for p in pixels[:len(ctx_idx)]])
    target = encode_video(pixels[len(ctx_idx):])
    if target.shape[0] != s.shot_latent_frames:
        raise ValueError(f"video.shot_frames={v.shot_frames} encodes to {target.shape[0]} latent frames, "
                         f"config says shotstream.shot_latent_frames={s.shot_latent_frames}")
    max_shots = cfg.data.max_shots
    text = np.zeros((max_shots, cfg.model.text_len, cfg.model.text_dim), np.float32)
    text[:min(len(ranges), max_shots)] = encode_text(list(clip.prompts[:max_shots]))
    return dict(context=context.astype(np.float32), context_shot=ctx_shot,
                target=target.astype(np.float32), target_shot=np.int32(len(ranges) - 1),
                text=text, num_shots=np.int32(len(ranges)))


def model_encoders(path: str) -> tuple[Callable, Callable]:
    """(encode_video, encode_text) from a full model directory: its Wan VAE (normalised latents) and umT5."""
    from shotstream_jax import model_dir
    _, _, vae, text_encoder = model_dir.load_pipeline(path)
    encode = nnx.jit(lambda m, v: m.cfg.normalize(m.encode(v)))

    def encode_video(video: np.ndarray) -> np.ndarray:
        return np.asarray(encode(vae, jnp.asarray(video)[None]))[0]

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
    """Random-access source over `preencode.py` output: one .npz per example."""

    def __init__(self, directory: str):
        self.files = sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".npz"))
        if not self.files:
            raise FileNotFoundError(f"{directory}: no pre-encoded .npz examples; run shotstream_jax.data.preencode")

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with np.load(self.files[i]) as z:
            return {k: (z[k].astype(np.float32) if z[k].dtype == np.float16 else z[k]) for k in z.files}


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
        return PreencodedSource(cfg.data.latents_dir)
    clips, _ = manifest.read_manifest(manifest_path(cfg, workdir), min_shots=min_shots)
    return ClipSource(clips, cfg, *encoders(cfg))


def dataset(src, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
            num_threads: int = 2):
    """Infinite grain pipeline of stacked batches for this process; reshuffled every epoch.

    `batch_size` is the per-process batch. Broken examples (None) are dropped
    by grain's iterator. Save/restore the position with `get_state/set_state`
    on the iterator.
    """
    ds = grain.MapDataset.source(src)
    if process_count > 1:
        ds = ds[process_index::process_count]
    ds = ds.seed(seed).shuffle().repeat(None)
    # Few decoding threads: video decoding shares the host's cores with the input transfers.
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch_size)
                              ).batch(batch_size)
