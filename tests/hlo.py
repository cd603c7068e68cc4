"""Reading lowered StableHLO text in tests: the tensor types an op takes and makes."""
import re

import jax
import numpy as np

_DTYPES = {"bfloat16": "bf16", "float32": "f32", "float16": "f16", "int32": "i32", "bool": "i1"}


def tensor_type(x) -> str:
    """An array or ShapeDtypeStruct -> its StableHLO tensor type, e.g. "1x2x4x6x16xbf16"."""
    return "x".join([*map(str, x.shape), _DTYPES[jax.numpy.dtype(x.dtype).name]])


def elements(t: str) -> int:
    """Elements of a tensor type: "2x3xbf16" -> 6."""
    return int(np.prod([int(d) for d in t.split("x")[:-1]] or [1]))


def results(text: str, op: str) -> list[str]:
    """The result type of every `stablehlo.<op>` in `text`."""
    return re.findall(rf"stablehlo\.{op}\b.*-> tensor<([^>]*)>", text)


def operands(text: str, op: str) -> list[str]:
    """The operand types of every `stablehlo.<op>` in `text`, all in one list."""
    sigs = re.findall(rf"stablehlo\.{op}\b.*: \(([^)]*)\) ->", text)
    return [t for sig in sigs for t in re.findall(r"tensor<([^>]*)>", sig)]


def types(text: str, dtype: str) -> list[str]:
    """Every tensor type of element type `dtype` ("i1", "bf16"...) anywhere in `text`."""
    return re.findall(rf"tensor<((?:[0-9]+x)*{dtype})>", text)
