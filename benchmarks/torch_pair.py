"""One Wan DiT in two frameworks: diffusers' WanTransformer3DModel and our WanDiT
holding the same weights (saved by diffusers, read back by `convert.load_wan_dit`).

Shared by benchmarks/dit_forward.py and benchmarks/compare_torch.py. PyTorch
may be imported here because benchmarks, like tests, are not runtime code.
"""
from __future__ import annotations

import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy

import jax  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from shotstream_jax import convert  # noqa: E402

# The issue-8 shape: 4 Wan-style blocks (head dim 128 as every Wan2.1 DiT), one
# 3-latent-frame chunk at 832x480 (30x52 = 1560 tokens per frame) and a
# 512-token umT5 prompt.
MID = dict(layers=4, dim=512, heads=4, ffn=2048, text_dim=4096, freq_dim=256)
LATENT_SHAPE = (1, 3, 60, 104, 16)  # [B, F, H, W, C]
TEXT_LEN = 512


def torch_model(layers, dim, heads, ffn, text_dim, freq_dim, seed=0):
    """A randomly initialised diffusers Wan transformer (float32, eval mode)."""
    from diffusers import WanTransformer3DModel
    torch.manual_seed(seed)
    m = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=dim // heads,
        in_channels=16, out_channels=16, text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn,
        num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
    with torch.no_grad():  # the modulation tables start at zero-ish; make every weight matter
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m.eval()


def jax_copy(model, **overrides):
    """Our WanDiT with the torch model's weights, through the public checkpoint loader."""
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        return convert.load_wan_dit(d, **overrides)


def inputs(latent_shape=LATENT_SHAPE, text_len=TEXT_LEN, text_dim=MID["text_dim"], seed=0):
    """latents f32[B,F,H,W,16], t f32[B], text f32[B,L,text_dim] as numpy."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(latent_shape).astype(np.float32)
    t = np.full((latent_shape[0],), 740.0, np.float32)
    text = rng.standard_normal((latent_shape[0], text_len, text_dim)).astype(np.float32)
    return x, t, text


def jax_forward(dit):
    """jit(latents, t, text) -> velocity, parameters as an argument (not baked-in constants).

    Text K/V are recomputed inside, as the torch forward does, so both time the same work.
    """
    graphdef, state = nnx.split(dit)
    fn = jax.jit(lambda s, x, t, text: nnx.merge(graphdef, s)(x, t, text))
    return lambda x, t, text: fn(state, x, t, text)


def torch_inputs(x, t, text, device="cpu", dtype=torch.float32):
    """Numpy (latents [B,F,H,W,C], t [B], text [B,L,Dt]) -> diffusers' tensors (latents [B,C,F,H,W])."""
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3))).to(device, dtype)
    return xt, torch.from_numpy(t).to(device), torch.from_numpy(text).to(device, dtype)


def seconds(fn, sync) -> float:
    """Wall time of one `fn()`; `sync(result)` waits for the device to finish."""
    t0 = time.perf_counter()
    sync(fn())
    return time.perf_counter() - t0


def machine() -> str:
    import os
    import platform
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores visible, load average {load}, "
            f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}")
