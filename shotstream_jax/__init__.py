"""ShotStream in JAX: streaming multi-shot video generation.

`ShotStream` is imported lazily so that `import shotstream_jax.convert` does not
pull in the whole pipeline.
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name == "ShotStream":
        from shotstream_jax.pipeline import ShotStream
        return ShotStream
    raise AttributeError(f"module 'shotstream_jax' has no attribute {name!r}")
