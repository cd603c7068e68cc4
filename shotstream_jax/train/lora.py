"""LoRA on every Linear of the DiT blocks, as a transform of pure parameter dicts.

W' = W + (alpha / rank) A B with A [layers, in, rank] (normal / sqrt(in)) and
B [layers, rank, out] (zeros), so a fresh adapter leaves the model unchanged.
Merging before the forward costs one small matmul per Linear and keeps
WanDiT untouched; gradients reach A and B through the merge.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _block_kernels(params: dict):
    """(path, kernel) of every stacked block Linear: params['blocks'][...]['kernel'] of rank 3."""
    out = []

    def walk(node, path):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, path + (k,))
            elif k == "kernel" and v.ndim == 3:
                out.append((path, v))

    walk(params["blocks"], ("blocks",))
    return out


def init(params: dict, rank: int, key: jax.Array) -> dict:
    """Adapters {'a/b/c': {'a': [L, in, r], 'b': [L, r, out]}} for every block Linear of `params`."""
    lora = {}
    kernels = _block_kernels(params)
    for (path, w), k in zip(kernels, jax.random.split(key, len(kernels))):
        layers, din, dout = w.shape
        lora["/".join(path)] = {
            "a": jax.random.normal(k, (layers, din, rank), jnp.float32) / jnp.sqrt(din),
            "b": jnp.zeros((layers, rank, dout), jnp.float32)}
    return lora


def names(lora: dict, param_names: dict) -> dict:
    """Logical axis names of the adapters: those of the kernels they adapt."""
    out = {}
    for path, ab in lora.items():
        node = param_names
        for p in path.split("/"):
            node = node[p]
        # The base kernel's names on both adapters: A [L, in, r] and B [L, r, out] are split over the
        # same mesh axes as W [L, in, out] (the rank taking the other one), not copied to every chip.
        out[path] = {"a": node["kernel"], "b": node["kernel"]}
    return out


def merge(params: dict, lora: dict, scale: float) -> dict:
    """params with every adapted kernel replaced by W + scale A B (a new dict; inputs untouched)."""
    def copy(node):
        return {k: copy(v) if isinstance(v, dict) else v for k, v in node.items()}

    out = copy(params)
    for path, ab in lora.items():
        node = out
        for p in path.split("/"):
            node = node[p]
        w = node["kernel"]
        node["kernel"] = (w.astype(jnp.float32) + scale * jnp.einsum("lir,lro->lio", ab["a"], ab["b"])).astype(w.dtype)
    return out
