"""Pre-encode a manifest into training examples: `python -m shotstream_jax.data.preencode`.

Writes DIR/000000.npz ... (one example each, the fields of `pipeline.build_example`,
text embeddings as float16 to halve the disk), DIR/negative_text.npy (the CFG
unconditional embedding) and DIR/index.json. Training
reads them with `--config.data.latents_dir=DIR`, skipping video decoding and the
VAE/text encoder entirely.
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import threading

import numpy as np
from absl import app, flags
from tqdm import tqdm

from shotstream_jax import checkpoint
from shotstream_jax.cli.common import config, define_config_flag, fail
from shotstream_jax.data import manifest, pipeline

log = logging.getLogger(__name__)


def preencode(cfg, manifest_path: str, out_dir: str, encode_video, encode_text, min_shots: int = 2,
              workers: int = 1) -> int:
    """Encode every usable clip of `manifest_path` into `out_dir`; returns the number written.

    `workers` threads build examples at once: they decode videos (ffmpeg, outside the GIL) in parallel, and
    take turns with the encoders (NNX modules are not thread-safe), which a single thread would leave idle
    on an accelerator while frames decode. The files are written in manifest order whatever their number.
    """
    clips, skipped = manifest.read_manifest(manifest_path, min_shots=min_shots)
    lock = threading.Lock()

    def one_at_a_time(fn):
        def call(x):
            with lock:
                return fn(x)
        return call

    def build(clip):
        try:
            return pipeline.build_example(clip, cfg, one_at_a_time(encode_video), one_at_a_time(encode_text))
        except ValueError as e:
            log.warning("skipping %s: %s", clip.video, e)
            return None

    written = 0
    with checkpoint.atomic_directory(out_dir) as tmp, \
            concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        for ex in tqdm(pool.map(build, clips), total=len(clips), desc="preencode", unit="clip"):
            if ex is None:
                skipped += 1
                continue
            ex["text"] = ex["text"].astype(np.float16)
            np.savez(os.path.join(tmp, f"{written:06d}.npz"), **ex)
            written += 1
        np.save(os.path.join(tmp, "negative_text.npy"),
                encode_text([pipeline.NEGATIVE_PROMPT])[0].astype(np.float16))
        checkpoint.write_json(os.path.join(tmp, "index.json"), {
            "manifest": str(checkpoint.as_path(manifest_path)), "examples": written, "skipped": skipped,
            "size": cfg.size, "height": cfg.video.height, "width": cfg.video.width})
    return written


FLAGS = flags.FLAGS


def main(argv):
    del argv
    cfg = config()
    if not cfg.data.manifest:
        return fail("preencode", "set --config.data.manifest to the CSV to encode")
    try:
        n = preencode(cfg, cfg.data.manifest, FLAGS.out, *pipeline.encoders(cfg), workers=FLAGS.workers)
    except (ValueError, OSError) as e:
        return fail("preencode", str(e))
    print(f"wrote {n} examples to {FLAGS.out}")
    return 0


if __name__ == "__main__":
    define_config_flag()
    flags.DEFINE_string("out", None, "Output directory (must not exist).", required=True)
    flags.DEFINE_integer("workers", 1, "Threads building examples at once (the output does not depend on it).")
    app.run(main)
