"""The one on-disk format: orbax checkpoints of NNX state plus a JSON config.

A model directory holds `config.json` and one orbax checkpoint per component
(`dit/`, and later `vae/`, `text_encoder/`). Directories are written under a
temporary name and renamed into place, so a failed write leaves nothing
half-written at the destination.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx


def as_path(p) -> epath.Path:
    """epath.Path of `p`: a URL (gs://bucket/...) as it is, a local path made absolute (orbax wants that).

    Training reads and writes every directory through this, so work, init,
    teacher, latent and export directories can be GCS buckets.
    """
    s = os.fspath(p)
    return epath.Path(s if "://" in s else os.path.abspath(s))


@contextlib.contextmanager
def atomic_directory(path: str, overwrite: bool = False) -> Iterator[str]:
    """Yields a temporary directory that becomes `path` when the block succeeds."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite and (not os.path.isdir(path) or os.listdir(path)):
        raise FileExistsError(f"{path}: output already exists; choose another path or pass --overwrite")
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)
    except OSError as e:
        raise OSError(f"{path}: cannot write here ({e.strerror})") from e
    try:
        yield tmp
        if os.path.exists(path):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def save_state(path: str, module: nnx.Module) -> None:
    """Write the module's state as an orbax checkpoint at `path` (must not exist)."""
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(as_path(path), nnx.state(module).to_pure_dict())
        ckptr.wait_until_finished()


def load_state(path: str, module_fn: Callable[[], nnx.Module]) -> nnx.Module:
    """Build `module_fn()` abstractly and restore its state from `path`."""
    abstract = nnx.eval_shape(module_fn)
    graphdef, state = nnx.split(abstract)
    # An explicit device: checkpoints written from a mesh (a pod's export) restore onto this one.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device), state.to_pure_dict())
    if not as_path(path).is_dir():
        raise FileNotFoundError(f"{path}: no orbax checkpoint here")
    with ocp.StandardCheckpointer() as ckptr:
        try:
            restored = ckptr.restore(as_path(path), target)
        except (ValueError, KeyError) as e:
            raise ValueError(f"{path}: checkpoint does not match the model config ({e})") from e
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state)


def write_json(path: str, obj: Any) -> None:
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)


def read_json(path: str) -> Any:
    try:
        with as_path(path).open() as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (is this a shotstream_jax model directory?)") from None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
