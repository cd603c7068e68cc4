"""Shared test set-up: float32 matmuls at full precision on CPU, quiet logs."""
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import subprocess  # noqa: E402
import sys  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(*args, stdin=None, timeout=600):
    """Run `python ARGS` with this checkout first on the path (installed or not)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, input=stdin,
                          env=env, cwd=REPO, timeout=timeout)
