"""shotstream-convert: PyTorch weights -> a shotstream_jax model directory (orbax).

A DiT alone (e.g. to fine-tune or benchmark):
  shotstream-convert --src=Wan2.1-T2V-1.3B/ --out=models/wan13b
A full generation model (DiT + VAE + umT5 + tokenizer):
  shotstream-convert --src=shotstream_student.safetensors --vae=Wan2.1_VAE.pth \\
      --umt5=models_t5_umt5-xxl-enc-bf16.pth --tokenizer=google/umt5-xxl/tokenizer.json \\
      --config=configs/wan_1_3b/generate.py --out=models/shotstream

Each source may be the original release layout or the diffusers/transformers
one (.safetensors/.pth file, folder, or sharded *.index.json); the layout is
detected from the key names. The output loads back bit-identically.

The other way, a DiT trained or fine-tuned here (a model directory, e.g. a
training run's WORKDIR/export) back to PyTorch, for the official inference code
or diffusers (diffusion_pytorch_model.safetensors + config.json):
  shotstream-convert --export=original --src=runs/inter/export --out=shotstream_wan/
  shotstream-convert --export=diffusers --src=runs/inter/export --out=shotstream_diffusers/transformer
"""
import sys

from absl import app, flags

from shotstream_jax.cli import common
from shotstream_jax.cli.common import config, define_config_flag, fail

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "PyTorch DiT checkpoint: file, directory or *.index.json "
                    "(with --export: a shotstream_jax model directory).")
flags.DEFINE_enum("export", None, ["original", "diffusers"],
                  "Write the DiT of the model directory --src as PyTorch safetensors + config.json in the "
                  "original Wan or the diffusers layout, instead of importing.")
flags.DEFINE_string("vae", None, "Wan2.1 VAE checkpoint (original Wan2.1_VAE.pth or diffusers AutoencoderKLWan).")
flags.DEFINE_string("umt5", None, "umT5 encoder (transformers UMT5EncoderModel folder or original Wan .pth).")
flags.DEFINE_string("tokenizer", None, "umT5 tokenizer.json or spiece.model (default: found beside --umt5).")
flags.DEFINE_string("out", None, "Output model directory (written atomically).")
flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")
flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"], "Dtype to store the DiT weights in.")
define_config_flag("configs/wan_1_3b/generate.py")

PROG = "shotstream-convert"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.src or not FLAGS.out:
        raise app.UsageError("both --src and --out are required")
    if bool(FLAGS.vae) != bool(FLAGS.umt5):
        raise app.UsageError("a generation model needs both --vae and --umt5 (or neither, for a DiT alone)")
    from shotstream_jax import convert, model_dir
    from shotstream_jax.convert import CheckpointError
    from shotstream_jax.text import Tokenizer
    if FLAGS.export:
        if FLAGS.vae or FLAGS.umt5:
            raise app.UsageError("--export writes the DiT only; drop --vae/--umt5")
        from shotstream_jax.convert.dit import export_wan_dit
        try:
            dit = model_dir.load_dit(FLAGS.src)
            export_wan_dit(dit, FLAGS.out, FLAGS.export, overwrite=FLAGS.overwrite)
        except (CheckpointError, FileExistsError, FileNotFoundError, OSError, ValueError) as e:
            return fail(PROG, str(e))
        print(f"wrote the DiT of {FLAGS.src} to {FLAGS.out} ({FLAGS.export} layout)")
        return 0
    try:
        dit = convert.load_wan_dit(FLAGS.src, param_dtype=FLAGS.param_dtype)
        extra = {}
        if FLAGS.vae:
            tokenizer = Tokenizer(FLAGS.tokenizer) if FLAGS.tokenizer else Tokenizer.find(FLAGS.umt5)
            extra = dict(vae=convert.load_wan_vae(FLAGS.vae), text_model=convert.load_umt5(FLAGS.umt5),
                         tokenizer=tokenizer.path, config=config())
        model_dir.save(FLAGS.out, dit, overwrite=FLAGS.overwrite, **extra)
    except (CheckpointError, FileExistsError, OSError, ValueError) as e:
        return fail(PROG, str(e))
    what = "generation model" if FLAGS.vae else "DiT"
    print(f"wrote {what} to {FLAGS.out} (DiT dim {dit.cfg.dim}, {dit.cfg.num_layers} layers)")
    return 0


def run():
    common.run(main, __name__)


if __name__ == "__main__":
    run()
