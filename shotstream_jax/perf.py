"""Performance accounting for `shotstream-bench`: FLOP counts, device peaks, memory, and
the timed streaming loop of one shot.

FLOPs are counted analytically from the DiT config (a multiply-add is 2 FLOPs),
for the work a pass must do: the "model FLOPs" of MFU, not what a kernel
happens to execute (masked cache slots that a kernel computes and discards
are not counted). Per DiT pass over Lq query tokens in F frames that attend
to Lk keys (cache + themselves) and Lt text tokens, with width D, FFN width
Dff, patch volume P = pt*ph*pw and C = 16 latent channels:

  per layer   2*Lq*(4*D^2 + 2*D^2 + 2*D*Dff)   q,k,v,o self-attn; q,o cross-attn; FFN
            + 4*Lq*Lk*D                        self-attention scores and weighted sum (all heads)
            + 4*Lq*Lt*D                        cross-attention scores and weighted sum
  once        2*Lq*(P*C*D + D*P*C)             patch embedding and head
            + 2*F*(Dfreq*D + D*D + 6*D*D)      time embedding MLP and projection, per frame

The cross-attention K/V of the text (text embedding MLP and per-layer k, v
projections) are computed once per prompt, and counted in `text_kv_flops`.
"""
from __future__ import annotations

import math
import resource
import time
from typing import Any, Callable, NamedTuple

import jax

from shotstream_jax.models.wan_dit import WanDiTConfig

# Dense bf16 peak FLOP/s per chip (vendor datasheets, no sparsity), by a
# lower-case substring of `jax.Device.device_kind`; first match wins, so the
# more specific names come first.
PEAK_BF16_FLOPS = (
    ("h100 pcie", 756e12),
    ("h100", 989e12),   # SXM
    ("h200", 989e12),
    ("h800", 989e12),
    ("gh200", 989e12),
    ("b200", 2250e12),
    ("a100", 312e12),
    ("l40s", 362e12),
    ("a10g", 125e12),
    ("tpu v6 lite", 918e12),  # v6e
    ("tpu v5 lite", 197e12),  # v5e
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),
    ("tpu v4", 275e12),
)


def dit_pass_flops(cfg: WanDiTConfig, q_tokens: int, kv_tokens: int, text_tokens: int, frames: int) -> int:
    """Model FLOPs of one DiT pass (formula in the module docstring)."""
    d, dff = cfg.dim, cfg.ffn_dim
    patch = math.prod(cfg.patch_size)
    per_layer = (2 * q_tokens * (6 * d * d + 2 * d * dff)
                 + 4 * q_tokens * kv_tokens * d
                 + 4 * q_tokens * text_tokens * d)
    once = (2 * q_tokens * (patch * cfg.in_channels * d + d * patch * cfg.out_channels)
            + 2 * frames * (cfg.freq_dim * d + d * d + 6 * d * d))
    return cfg.num_layers * per_layer + once


def text_kv_flops(cfg: WanDiTConfig, text_tokens: int) -> int:
    """FLOPs of `WanDiT.encode_text`: the text embedding MLP, then k and v of every layer."""
    d = cfg.dim
    return 2 * text_tokens * (cfg.text_dim * d + d * d) + cfg.num_layers * 2 * text_tokens * 2 * d * d


def shot_flops(cfg: WanDiTConfig, tokens_per_frame: int, text_tokens: int, context_frames: int,
               chunk_frames: int, chunks: int, steps: int, context_valid: int) -> int:
    """Model FLOPs of the DiT passes of one shot: a context pass, then per chunk `steps`
    denoising passes and one cache pass.

    `context_valid` (<= context_frames) is how many context frames hold history
    (0 in the first shot: its context pass computes nothing that is used, so it
    is not counted); chunk c attends to the valid context, the c finished
    chunks and itself.
    """
    s = tokens_per_frame
    total = 0
    if context_valid:
        n = context_valid * s
        total += dit_pass_flops(cfg, n, n, text_tokens, context_valid)
    q = chunk_frames * s
    for c in range(chunks):
        kv = context_valid * s + (c + 1) * q
        total += (steps + 1) * dit_pass_flops(cfg, q, kv, text_tokens, chunk_frames)
    return total


def peak_flops(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s of a known accelerator, None for CPUs and unknown devices."""
    kind = device_kind.lower()
    return next((peak for name, peak in PEAK_BF16_FLOPS if name in kind), None)


def device_info() -> dict:
    d = jax.devices()[0]
    return {"device": f"{jax.device_count()} x {d.device_kind}", "device_kind": d.device_kind,
            "backend": jax.default_backend()}


def peak_memory() -> tuple[int, str]:
    """(bytes, what they measure): the device allocator's peak when it reports one, else the process peak RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device memory_stats peak_bytes_in_use"
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS (getrusage ru_maxrss)"


class ShotPasses(NamedTuple):
    """The streaming pipeline as callables; every one returns device arrays without waiting.

    encode_prompt(shot) -> text            prompt in -> what the DiT passes read (text K/V)
    context_pass(cache, text, shot) -> cache       fill the global cache from history
    denoise_chunk(cache, text, shot, chunk) -> z   the few-step sampler over one chunk
    commit_chunk(cache, z, text, shot, chunk) -> cache   the t=0 pass writing the local cache
    init_decode() -> decode_state                  a fresh streaming VAE state (per shot)
    decode_chunk(decode_state, z) -> (frames, decode_state)
    """
    encode_prompt: Callable[[int], Any]
    context_pass: Callable[[Any, Any, int], Any]
    denoise_chunk: Callable[[Any, Any, int, int], Any]
    commit_chunk: Callable[[Any, Any, Any, int, int], Any]
    init_decode: Callable[[], Any]
    decode_chunk: Callable[[Any, Any], tuple[Any, Any]]


class ShotTiming(NamedTuple):
    text_encode_s: float
    context_pass_s: float
    per_chunk_s: list[float]
    first_frame_latency_s: float
    total_s: float
    frames: int


def stream_shot(passes: ShotPasses, cache: Any, shot: int, chunks: int) -> tuple[Any, ShotTiming]:
    """Run one shot through `passes`, timing it as a viewer would see it.

    The only host waits are the deliberate ones that define the figures: after
    the text encoding, after the context pass, on each chunk's decoded frames
    (a streaming consumer needs them) and on the cache at the end of the shot.
    Each chunk's cache pass is dispatched after its decode, so it runs while
    the frames are handed out and its time lands in the next chunk's figure:
    per_chunk_s[c] = from chunk c-1's frames (or the end of the context pass)
    to chunk c's frames.
    """
    t_prompt = time.perf_counter()
    text = jax.block_until_ready(passes.encode_prompt(shot))
    t_text = time.perf_counter()
    cache = jax.block_until_ready(passes.context_pass(cache, text, shot))
    t_prev = t_ctx = time.perf_counter()
    decode_state = passes.init_decode()
    per_chunk, frames, first = [], 0, None
    for c in range(chunks):
        z = passes.denoise_chunk(cache, text, shot, c)
        pixels, decode_state = passes.decode_chunk(decode_state, z)
        cache = passes.commit_chunk(cache, z, text, shot, c)
        jax.block_until_ready(pixels)
        now = time.perf_counter()
        per_chunk.append(now - t_prev)
        t_prev = now
        first = now - t_prompt if first is None else first
        frames += pixels.shape[1]
    cache = jax.block_until_ready(cache)
    total = time.perf_counter() - t_prompt
    return cache, ShotTiming(t_text - t_prompt, t_ctx - t_text, per_chunk, first, total, frames)
