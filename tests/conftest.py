"""Shared test set-up: float32 matmuls at full precision on CPU, quiet logs, a compilation cache of our own."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# The commands' persistent compilation cache ($XDG_CACHE_HOME/shotstream_jax/xla) in a directory of this
# test run, not the user's: commands started by the tests share it, and it goes when the run ends.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="shotstream-tests-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(*args, stdin=None, timeout=600, env=None):
    """Run `python ARGS` with this checkout first on the path (installed or not); `env` adds variables."""
    env = dict(os.environ, **(env or {}), PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, input=stdin,
                          env=env, cwd=REPO, timeout=timeout)


def default_video() -> tuple[int, int, int]:
    """(frames per shot, height, width) of the package's default model: the shipped Shapes model's
    config when the package has one, else the toy's."""
    from shotstream_jax import default_model
    from shotstream_jax.config import get_config
    path = os.path.join(default_model.SHIPPED, "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            v = json.load(f)["config"]["video"]
    else:
        v = get_config("toy", "generate").video
    return v["shot_frames"], v["height"], v["width"]
