"""shotstream-convert: PyTorch Wan weights -> a shotstream_jax model directory (orbax).

  shotstream-convert --src=Wan2.1-T2V-1.3B/ --out=models/wan13b

--src may be the original Wan release (.safetensors/.pth file or folder) or a
diffusers `transformer/` folder; the layout is detected from the key names.
The output loads back bit-identically with `model_dir.load_dit(--out)`.
"""
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "PyTorch DiT checkpoint: file, directory or *.index.json.")
flags.DEFINE_string("out", None, "Output model directory (written atomically).")
flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")
flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"], "Dtype to store the weights in.")


def main(argv):
    del argv
    from shotstream_jax import convert, model_dir
    from shotstream_jax.convert import CheckpointError
    if not FLAGS.src or not FLAGS.out:
        raise app.UsageError("both --src and --out are required")
    try:
        dit = convert.load_wan_dit(FLAGS.src, param_dtype=FLAGS.param_dtype)
        model_dir.save_dit(FLAGS.out, dit, overwrite=FLAGS.overwrite)
    except (CheckpointError, FileExistsError, OSError, ValueError) as e:
        print(f"shotstream-convert: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {FLAGS.out} (dim {dit.cfg.dim}, {dit.cfg.num_layers} layers)")
    return 0


def run():
    app.run(main)


if __name__ == "__main__":
    run()
