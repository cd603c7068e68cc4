"""ShotStream in JAX: streaming multi-shot video generation.

`ShotStream` is imported lazily so that `import shotstream_jax.convert` does not
pull in the whole pipeline.
"""

import os

__version__ = "0.1.0"

# imageio-ffmpeg starts ffmpeg with preexec_fn=os.setpgrp, and a fork that runs Python code in a
# multithreaded (JAX) process can hang before exec (imageio-ffmpeg issue #58): a training run
# reading videos hung so. This switch makes it start ffmpeg without preexec_fn.
os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")


def __getattr__(name):
    if name == "ShotStream":
        from shotstream_jax.pipeline import ShotStream
        return ShotStream
    raise AttributeError(f"module 'shotstream_jax' has no attribute {name!r}")
