"""Reading checkpoint files into flat numpy dicts, and filling NNX modules.

Shared by every loader: one way to find the files of a checkpoint, one way to
report what is wrong with it.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Mapping

import jax
import numpy as np
from flax import nnx

_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path


def _list_head(items: Iterable[str], n: int = 8) -> str:
    items = sorted(items)
    head = ", ".join(items[:n])
    return head + (f" ... ({len(items) - n} more)" if len(items) > n else "")


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch  # conversion extra: only needed for .pth files
    except ImportError as e:
        raise CheckpointError(
            path, "reading .pth/.bin files needs PyTorch: pip install 'shotstream_jax[convert]'"
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or truncated file
        raise CheckpointError(path, f"not a readable PyTorch checkpoint ({e})") from e
    for key in ("state_dict", "model", "module", "generator"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"expected a state dict, found {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not hasattr(v, "detach"):
            continue
        v = v.detach().cpu()
        if v.dtype == torch.bfloat16:
            import ml_dtypes
            out[k] = v.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            out[k] = v.numpy()
    return out


def _read_file(path: str) -> dict[str, np.ndarray]:
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        try:
            return load_file(path)
        except Exception as e:
            raise CheckpointError(path, f"not a readable safetensors file ({e})") from e
    if path.endswith((".pth", ".pt", ".bin", ".ckpt")):
        return _read_torch(path)
    raise CheckpointError(path, f"unknown checkpoint file type (expected one of {_WEIGHT_SUFFIXES})")


def _read_index(path: str) -> dict[str, np.ndarray]:
    try:
        with open(path) as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(path, f"not a valid sharded-checkpoint index ({e})") from e
    base = os.path.dirname(path)
    out: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(base, shard)
        if not os.path.exists(shard_path):
            raise CheckpointError(path, f"shard {shard} named in the index is missing")
        out.update(_read_file(shard_path))
    return out


def find_weight_file(path: str, prefer: tuple[str, ...] = ()) -> str:
    """The weight file (or index) of a checkpoint path that may be a directory."""
    if not os.path.exists(path):
        raise CheckpointError(path, "no such file or directory")
    if os.path.isfile(path):
        return path
    names = sorted(os.listdir(path))
    for pattern in prefer:
        hits = [n for n in names if n == pattern]
        if hits:
            return os.path.join(path, hits[0])
    indexes = [n for n in names if n.endswith(".index.json")]
    if indexes:
        return os.path.join(path, indexes[0])
    weights = [n for n in names if n.endswith(_WEIGHT_SUFFIXES)]
    if len(weights) == 1:
        return os.path.join(path, weights[0])
    if not weights:
        raise CheckpointError(path, "directory holds no weight file (*.safetensors, *.pth, *.index.json)")
    raise CheckpointError(path, f"directory holds several weight files and no index: {_list_head(weights)}")


def read_state_dict(path: str, prefer: tuple[str, ...] = ()) -> tuple[dict[str, np.ndarray], str]:
    """Flat {name: array} from a file, a directory or a sharded index; also the file read."""
    f = find_weight_file(path, prefer)
    sd = _read_index(f) if f.endswith(".index.json") else _read_file(f)
    if not sd:
        raise CheckpointError(f, "checkpoint holds no tensors")
    return sd, f


def read_json_config(path: str, names=("config.json",)) -> dict | None:
    """config.json beside (or inside) a checkpoint path, if there is one."""
    d = path if os.path.isdir(path) else os.path.dirname(path)
    for n in names:
        p = os.path.join(d, n)
        if os.path.exists(p):
            with open(p) as fh:
                return json.load(fh)
    return None


def fill_module(module_fn: Callable[[], nnx.Module], arrays: Mapping[str, np.ndarray],
                src: str, dtype_of=None) -> nnx.Module:
    """Build `module_fn()` abstractly, then fill every parameter from `arrays`.

    `arrays` is keyed by our parameter path joined with '.', e.g.
    'blocks.self_attn.q.kernel'. Missing keys, unknown keys and shape
    mismatches are all collected and reported in one CheckpointError.
    """
    abstract = nnx.eval_shape(module_fn)
    graphdef, state = nnx.split(abstract)
    flat = nnx.to_flat_state(state)
    wanted = {".".join(str(p) for p in path): (path, var) for path, var in flat}
    missing = sorted(set(wanted) - set(arrays))
    unknown = sorted(set(arrays) - set(wanted))
    bad_shape = []
    for name, (path, var) in wanted.items():
        if name in arrays and tuple(arrays[name].shape) != tuple(var.get_value().shape):
            bad_shape.append(f"{name}: checkpoint {tuple(arrays[name].shape)} vs model {tuple(var.get_value().shape)}")
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_list_head(missing)}")
    if unknown:
        problems.append(f"{len(unknown)} unknown: {_list_head(unknown)}")
    if bad_shape:
        problems.append(f"{len(bad_shape)} shape mismatches: {_list_head(bad_shape, 4)}")
    if problems:
        raise CheckpointError(src, "does not match the model; " + "; ".join(problems))
    leaves = []
    for name, (path, var) in wanted.items():
        leaves.append((path, var.replace(jax.numpy.asarray(arrays[name], dtype=var.get_value().dtype))))
    state = nnx.from_flat_state(leaves)
    return nnx.merge(graphdef, state)
