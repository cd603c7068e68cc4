"""Pre-encode a manifest into training examples: `python -m shotstream_jax.data.preencode`.

Writes DIR/000000.npz ... (one example each, the fields of `pipeline.build_example`,
text embeddings as float16 to halve the disk), DIR/negative_text.npy (the CFG
unconditional embedding) and DIR/index.json; a stopped run goes on where it
stopped (`preencode`). Training
reads them with `--config.data.latents_dir=DIR`, skipping video decoding and the
VAE/text encoder entirely.
"""
from __future__ import annotations

import functools
import logging
import multiprocessing
import os

import jax
import numpy as np
from absl import app, flags
from tqdm import tqdm

from shotstream_jax import checkpoint
from shotstream_jax.cli.common import data_command, define_config_flag
from shotstream_jax.data import manifest, pipeline

log = logging.getLogger(__name__)


def _pixels_or_error(clip, cfg):
    """`pipeline.clip_pixels`, or the ValueError that makes the clip unusable (a worker process's job)."""
    try:
        return pipeline.clip_pixels(clip, cfg)
    except ValueError as e:
        return e


def _cpu_only():
    """Decoding processes never need the accelerator; one that touched it would reserve most of its memory."""
    jax.config.update("jax_platforms", "cpu")


def _decoded(pool, job, clips, window: int):
    """`job` of every clip, in order, decoded by `pool` one window ahead of the caller (bounded memory:
    an unbounded imap would queue every clip's frames whenever the encoder is the slower side)."""
    parts = [clips[i:i + window] for i in range(0, len(clips), window)]
    pending = pool.map_async(job, parts[0]) if parts else None
    for k in range(len(parts)):
        done = pending.get()
        pending = pool.map_async(job, parts[k + 1]) if k + 1 < len(parts) else None
        yield from done


def _resume(work: str, about: dict) -> dict:
    """The progress of an earlier run in `work` (zeros when there is none); ValueError when it encoded
    another manifest or size."""
    path = os.path.join(work, "progress.json")
    if not os.path.exists(path):
        os.makedirs(work, exist_ok=True)
        return {"clips_done": 0, "written": 0, "broken": 0}
    progress = checkpoint.read_json(path)
    theirs = {k: progress.get(k) for k in about}
    if theirs != about:
        raise ValueError(f"{work}: a stopped pre-encode of {theirs}, not of {about}; delete it or pass that run's "
                         f"arguments")
    log.info("%s: going on after %d clips", work, progress["clips_done"])
    return progress


def preencode(cfg, manifest_path: str, out_dir: str, encode_video, encode_text, min_shots: int = 2,
              workers: int = 1, save_every: int = 256, batch_clips: int = 64,
              max_batch_pixels: int = 1 << 26) -> int:
    """Encode every usable clip of `manifest_path` into `out_dir`; returns the number written.

    `workers` > 1 decodes the videos in that many processes while this one runs the encoders; the files
    are the same, in manifest order, whatever their number. The encoders run on batches of up to
    `batch_clips` clips and `max_batch_pixels` decoded pixels (`pipeline.encode_examples`; Wan-size
    clips: about two a batch): on a 16-core H200 host, clip by clip, they held pre-encoding of the
    Shapes world to 26 clips/s whatever the number of decoding processes.

    The examples are written to OUT_DIR.partial, which becomes `out_dir` once every clip is done. Its
    progress.json counts the clips done about every `save_every` clips, so a run that is stopped goes
    on from there when started again with the same arguments.
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise FileExistsError(f"{out_dir}: output already exists; choose another path")
    clips, skipped = manifest.read_manifest(manifest_path, min_shots=min_shots)
    work = out_dir + ".partial"
    about = {"manifest": str(checkpoint.as_path(manifest_path)), "size": cfg.size,
             "height": cfg.video.height, "width": cfg.video.width}
    progress = _resume(work, about)
    first = progress["clips_done"]

    def save_progress():
        checkpoint.write_json(os.path.join(work, ".progress.json"), dict(about, **progress))
        os.replace(os.path.join(work, ".progress.json"), os.path.join(work, "progress.json"))

    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_cpu_only) if workers > 1 else None
    job = functools.partial(_pixels_or_error, cfg=cfg)
    batch, batch_pixels, last_saved = [], 0, first

    def encode_batch():
        nonlocal batch, batch_pixels, last_saved
        for ex in pipeline.encode_examples(batch, cfg, encode_video, encode_text):
            ex["text"] = ex["text"].astype(np.float16)
            np.savez(os.path.join(work, f"{progress['written']:06d}.npz"), **ex)
            progress["written"] += 1
        batch, batch_pixels = [], 0
        if progress["clips_done"] - last_saved >= save_every:
            save_progress()
            last_saved = progress["clips_done"]

    try:
        decoded = _decoded(pool, job, clips[first:], 8 * workers) if pool else map(job, clips[first:])
        for clip, px in tqdm(zip(clips[first:], decoded), total=len(clips), initial=first, desc="preencode",
                             unit="clip"):
            if isinstance(px, ValueError):
                progress["broken"] += 1
                log.warning("skipping %s: %s", clip.video, px)
            else:
                batch.append((clip, *px))
                batch_pixels += px[0].size // 3
            progress["clips_done"] += 1
            if len(batch) >= batch_clips or batch_pixels >= max_batch_pixels:
                encode_batch()
        encode_batch()
    finally:
        if pool:
            pool.terminate()
    save_progress()
    np.save(os.path.join(work, "negative_text.npy"), encode_text([pipeline.NEGATIVE_PROMPT])[0].astype(np.float16))
    checkpoint.write_json(os.path.join(work, "index.json"), dict(
        about, examples=progress["written"], skipped=skipped + progress["broken"]))
    os.remove(os.path.join(work, "progress.json"))
    for name in os.listdir(work):  # written after the last progress.json by a run that was stopped
        if name.endswith(".npz") and int(name[:-4]) >= progress["written"]:
            os.remove(os.path.join(work, name))
    os.replace(work, out_dir)
    return progress["written"]


def manifest_clips(latents_dir: str) -> list[manifest.Clip]:
    """The manifest rows of a pre-encoded directory's examples: example i is row i of the manifest its
    index.json names (`preencode` writes them in manifest order); ValueError when they do not line up."""
    path = os.path.join(latents_dir, "index.json")
    try:
        index = checkpoint.read_json(path)
        clips, _ = manifest.read_manifest(index["manifest"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a pre-encoded world's index ({e}); write one with "
                         f"python -m shotstream_jax.data.preencode") from None
    if index.get("skipped") or len(clips) != index.get("examples"):
        raise ValueError(f"{path}: {index.get('examples')} examples for {len(clips)} manifest rows "
                         f"({index.get('skipped')} skipped): examples and rows no longer line up")
    return clips


FLAGS = flags.FLAGS


def main(argv):
    del argv

    def body(cfg):
        n = preencode(cfg, cfg.data.manifest, FLAGS.out, *pipeline.encoders(cfg), workers=FLAGS.workers)
        return f"wrote {n} examples to {FLAGS.out}"

    return data_command("preencode", "manifest", "set --config.data.manifest to the CSV to encode", body)


if __name__ == "__main__":
    define_config_flag()
    flags.DEFINE_string("out", None, "Output directory (must not exist; OUT.partial holds a stopped run, which "
                        "the same command continues).", required=True)
    flags.DEFINE_integer("workers", 1, "Processes decoding videos while this one encodes (the output does not depend on it).")
    app.run(main)
