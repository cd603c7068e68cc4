"""Loading the LAION aesthetic predictor: a linear head on L2-normalised CLIP image embeddings.

Accepted files (the predictor is small, a few KB to a few MB):
  * `sa_0_4_vit_l_14_linear.pth` (LAION-AI/aesthetic-predictor, the file VBench
    uses): one nn.Linear(768, 1), keys `weight` [1, 768] and `bias` [1];
  * `sac+logos+ava1-l14-linearMSE.pth` (christophschuhmann/improved-aesthetic-predictor):
    `layers.{0,2,4,6,7}.weight/bias`, Linear layers with only dropout between
    them, so their product is again one linear map;
  * the same tensors as .safetensors or .npz (no PyTorch needed), e.g. made once with
      import torch, numpy
      sd = torch.load("sa_0_4_vit_l_14_linear.pth")
      numpy.savez("aesthetic.npz", **{k: v.numpy() for k, v in sd.items()})
Reading a .pth needs PyTorch (imported only then).
"""
from __future__ import annotations

import re

import numpy as np

from shotstream_jax.convert.io import CheckpointError, read_state_dict


def _read(path: str) -> tuple[dict, str]:
    if path.endswith(".npz"):
        try:
            with np.load(path) as z:
                return {k: z[k] for k in z.files}, path
        except (OSError, ValueError) as e:
            raise CheckpointError(path, f"not a readable .npz file ({e})") from None
    return read_state_dict(path)


def load_aesthetic_head(path: str) -> tuple[np.ndarray, float]:
    """(w f32[D], b): the predictor's score of an L2-normalised CLIP image embedding e is w . e + b."""
    sd, src = _read(path)
    if set(sd) >= {"weight", "bias"}:
        layers = [(sd.pop("weight"), sd.pop("bias"))]
    else:
        idx = sorted({int(m.group(1)) for k in sd if (m := re.fullmatch(r"layers\.(\d+)\.(weight|bias)", k))})
        try:
            layers = [(sd.pop(f"layers.{i}.weight"), sd.pop(f"layers.{i}.bias")) for i in idx]
        except KeyError as e:
            raise CheckpointError(src, f"missing {e.args[0]}") from None
    if not layers or sd:
        raise CheckpointError(src, "not an aesthetic-predictor head (expected 'weight' and 'bias', or "
                                   f"'layers.N.weight/bias'){'; unknown: ' + ', '.join(sorted(sd)[:5]) if sd else ''}")
    w = np.eye(layers[0][0].shape[1], dtype=np.float64)
    b = np.zeros(layers[0][0].shape[1], np.float64)
    for weight, bias in layers:  # x -> x W^T + b, composed
        weight, bias = np.asarray(weight, np.float64), np.asarray(bias, np.float64)
        if weight.ndim != 2 or bias.shape != (weight.shape[0],) or weight.shape[1] != w.shape[1]:
            raise CheckpointError(src, f"layer shapes do not chain: weight {weight.shape}, bias {bias.shape} "
                                       f"after an output of {w.shape[1]}")
        w, b = w @ weight.T, b @ weight.T + bias
    if w.shape[1] != 1:
        raise CheckpointError(src, f"the head gives {w.shape[1]} outputs; an aesthetic score is one")
    return w[:, 0].astype(np.float32), float(b[0])
