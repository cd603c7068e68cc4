"""Shared command-line plumbing: config files with overrides, clean user errors."""
from __future__ import annotations

import os
import sys
import warnings

from absl import app, flags
from ml_collections import config_flags


def run(main, module: str) -> None:
    """absl's app.run(main) for the command defined in `module`, with the same --help however it starts.

    An installed console script's __main__ is pip's wrapper, and absl's --help shows __main__'s
    docstring and the flags defined in sys.argv[0]: without this, only a bare USAGE line. Either
    way --config, defined in this module, is listed too.
    """
    wrapper = sys.modules["__main__"]
    shown = [__name__]  # --config (define_config_flag) is defined here
    if wrapper is not sys.modules[module]:
        wrapper.__doc__ = sys.modules[module].__doc__
        shown.append(module)
    for defined_in in shown:
        for flag in flags.FLAGS.get_key_flags_for_module(defined_in):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main)


def define_config_flag(default: str | None = None) -> None:
    config_flags.DEFINE_config_file(
        "config", default,
        "Config file (configs/<size>/<stage>.py); override fields with --config.a.b=value.",
        lock_config=True)


def config():
    return flags.FLAGS.config


def user_cache_dir() -> str:
    """$XDG_CACHE_HOME/shotstream_jax/xla (default ~/.cache/...): the inference commands' compilation cache."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "shotstream_jax", "xla")


def define_compilation_cache_flag(default: str = "$XDG_CACHE_HOME/shotstream_jax/xla, else "
                                                  "~/.cache/shotstream_jax/xla") -> None:
    flags.DEFINE_string(
        "compilation_cache", "",
        "Persistent XLA compilation cache directory (local or gs://): a later run with the same model and video "
        f"size loads its compiled steps instead of compiling them again (minutes on a GPU). Default: {default}; "
        "'none' turns it off.")


def use_compilation_cache(default: str | None) -> None:
    """Point JAX's persistent compilation cache at --compilation_cache (`default` when the flag is empty;
    'none' or a None default: no cache)."""
    directory = flags.FLAGS.compilation_cache or default
    if directory and directory != "none":
        import jax
        jax.config.update("jax_compilation_cache_dir", directory)


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


def data_command(prog: str, field: str, missing: str, body) -> int:
    """A --config command over `config().data.<field>`: `missing` when it is empty, else body(cfg)'s
    message printed, or its ValueError/OSError as one clean error line."""
    cfg = config()
    if not cfg.data[field]:
        return fail(prog, missing)
    try:
        message = body(cfg)
    except (ValueError, OSError) as e:
        return fail(prog, str(e))
    print(message)
    return 0
