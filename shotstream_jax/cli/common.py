"""Shared command-line plumbing: config files with overrides, clean user errors."""
from __future__ import annotations

import sys
import warnings

from absl import flags
from ml_collections import config_flags


def define_config_flag(default: str | None = None) -> None:
    config_flags.DEFINE_config_file(
        "config", default,
        "Config file (configs/<size>/<stage>.py); override fields with --config.a.b=value.",
        lock_config=True)


def config():
    return flags.FLAGS.config


def quiet_logs() -> None:
    """Warnings and errors only, unless --verbosity was given: loading a model directory otherwise
    prints dozens of orbax INFO lines before the user's output."""
    from absl import logging
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def plain_warnings(prog: str) -> None:
    """User warnings (a prompt word the model does not know, a truncated prompt) as one line
    `prog: warning: ...` above any progress bar, instead of Python's file:line form inside it."""
    from tqdm import tqdm
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category is UserWarning:
            tqdm.write(f"{prog}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def fail(prog: str, message: str) -> int:
    """Print one clean error line (no traceback) and return the exit code."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 1
