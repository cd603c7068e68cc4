"""The one precision rule for generation, shared by the DiT, the VAE and the umT5 encoder."""
from __future__ import annotations

import dataclasses
from typing import Optional, TypeVar

import jax
from flax import nnx

M = TypeVar("M", bound=nnx.Module)


def for_inference(model: M, dtype: Optional[str] = None, **changes) -> M:
    """`model` with the same weights, ready for generation.

    On an accelerator it computes in `dtype` (default: its config's `dtype`) and
    stores its weights in that dtype (its config's `param_dtype`, where the
    model decides which parameters follow it): bf16 weights are read as they
    are, where float32 ones would be converted again by every pass (5 GB per
    DiT pass at 1.3B). On CPU, whose bf16 arithmetic is emulated, the dtypes
    stay as configured (float32 parameters). `changes` are further config
    fields for inference (the DiT's remat=False). `model` is any of our modules
    built as `type(model)(cfg, rngs=...)` from a dataclass `cfg` with `dtype`
    and `param_dtype` fields; returns `model` itself when nothing changes.
    """
    cfg = model.cfg
    if jax.default_backend() != "cpu":
        dtype = dtype or cfg.dtype
        changes.update(dtype=dtype, param_dtype=dtype)
    new = dataclasses.replace(cfg, **changes)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: type(model)(new, rngs=nnx.Rngs(0))))
    state = nnx.state(model)
    if new == cfg and all(a.dtype == b.dtype for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(abstract))):
        return model
    state = jax.tree.map(lambda x, a: x.astype(a.dtype) if x.dtype != a.dtype else x, state, abstract)
    return nnx.merge(graphdef, state)
