"""Pre-encode a manifest into training examples: `python -m shotstream_jax.data.preencode`.

Writes DIR/000000.npz ... (one example each, the fields of `pipeline.build_example`,
text embeddings as float16 to halve the disk), DIR/negative_text.npy (the CFG
unconditional embedding) and DIR/index.json. Training
reads them with `--config.data.latents_dir=DIR`, skipping video decoding and the
VAE/text encoder entirely.
"""
from __future__ import annotations

import logging
import os

import numpy as np
from absl import app, flags

from shotstream_jax import checkpoint
from shotstream_jax.cli.common import config, define_config_flag, fail
from shotstream_jax.data import manifest, pipeline

log = logging.getLogger(__name__)


def preencode(cfg, manifest_path: str, out_dir: str, encode_video, encode_text, min_shots: int = 2) -> int:
    """Encode every usable clip of `manifest_path` into `out_dir`; returns the number written."""
    clips, skipped = manifest.read_manifest(manifest_path, min_shots=min_shots)
    written = 0
    with checkpoint.atomic_directory(out_dir) as tmp:
        for clip in clips:
            try:
                ex = pipeline.build_example(clip, cfg, encode_video, encode_text)
            except ValueError as e:
                skipped += 1
                log.warning("skipping %s: %s", clip.video, e)
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
        n = preencode(cfg, cfg.data.manifest, FLAGS.out, *pipeline.encoders(cfg))
    except (ValueError, OSError) as e:
        return fail("preencode", str(e))
    print(f"wrote {n} examples to {FLAGS.out}")
    return 0


if __name__ == "__main__":
    define_config_flag()
    flags.DEFINE_string("out", None, "Output directory (must not exist).", required=True)
    app.run(main)
