"""Performance accounting for `shotstream-bench`: FLOP counts, device peaks, memory, and
the timing of one streamed shot.

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

`cost_report` (`shotstream-bench --dry_run`) is the static side: per chunk,
the same FLOPs split into matmuls, cross-attention, self-attention (useful:
the keys a query must see; executed: what a kernel bounded by the valid
prefix in key tiles computes; dense: what a kernel over the whole buffer
computed before the cache was written in place) and the VAE decode, the bytes
of weights and K/V a pass reads, and the roofline frames per second on named
accelerators (max of compute time and memory time, pass by pass).
"""
from __future__ import annotations

import math
import resource
import time
from typing import Any, Callable, Iterator, NamedTuple

import jax

from shotstream_jax import model_dir
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
    denoising passes and one cache pass (none for the shot's last chunk).

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
        passes = steps + (c < chunks - 1)  # a shot's last chunk is not committed
        total += passes * dit_pass_flops(cfg, q, kv, text_tokens, chunk_frames)
    return total


# name -> (dense bf16 FLOP/s, HBM bytes/s), vendor datasheets (SXM parts; TPU per chip).
ROOFLINE_DEVICES = {
    "H100": (989e12, 3.35e12),
    "H200": (989e12, 4.8e12),
    "A100": (312e12, 2.04e12),
    "v5p": (459e12, 2.765e12),
    "v6e": (918e12, 1.64e12),
}


class PassCost(NamedTuple):
    """One DiT pass of the student: FLOPs by kind, bytes read from memory."""
    matmul: int          # linear layers (self/cross q,k,v,o, FFN), patch embed, head, time MLP
    cross_attn: int      # scores and weighted sum against the text tokens
    self_useful: int     # scores and weighted sum against the keys the queries must see
    self_executed: int   # the same over whole key tiles up to the valid prefix (what the kernels run)
    self_dense: int      # the same over the whole cache buffer (a dense-mask kernel)
    weight_bytes: int
    kv_bytes: int        # the valid K/V prefix of every layer, read once

    @property
    def flops(self) -> int:
        return self.matmul + self.cross_attn + self.self_executed


def pass_cost(cfg: WanDiTConfig, q_tokens: int, kv_tokens: int, buffer_tokens: int, text_tokens: int, frames: int,
              *, key_tile: int = 128, param_bytes: int = 2, kv_bytes: int = 2) -> PassCost:
    """Static cost of one pass of q_tokens queries against a kv_tokens prefix of a buffer_tokens cache."""
    d, layers = cfg.dim, cfg.num_layers
    attn = lambda keys: layers * 4 * q_tokens * keys * d
    total = dit_pass_flops(cfg, q_tokens, kv_tokens, text_tokens, frames)
    cross = attn(text_tokens)
    # Weights a pass reads: self-attention q,k,v,o, cross-attention q,o (the text K/V are cached), FFN,
    # modulation; patch embedding, head, time MLP and projection.
    params = (layers * (6 * d * d + 2 * d * cfg.ffn_dim + 6 * d)
              + 2 * math.prod(cfg.patch_size) * cfg.in_channels * d + cfg.freq_dim * d + 7 * d * d)
    return PassCost(matmul=total - attn(kv_tokens) - cross, cross_attn=cross, self_useful=attn(kv_tokens),
                    self_executed=attn(-(-kv_tokens // key_tile) * key_tile), self_dense=attn(buffer_tokens),
                    weight_bytes=params * param_bytes, kv_bytes=layers * 2 * kv_tokens * d * kv_bytes)


def shot_costs(cfg: WanDiTConfig, tokens_per_frame: int, text_tokens: int, context_frames: int, chunk_frames: int,
               chunks: int, steps: int, context_valid: int, **kw) -> list[list[PassCost]]:
    """The passes of each chunk as the pipeline runs them: `steps` denoising passes and, for every
    chunk but the shot's last, its commit pass (run at the start of the next chunk's call).
    The shot's context pass, when it has context, is prepended to chunk 0."""
    s = tokens_per_frame
    buffer = (context_frames + chunks * chunk_frames) * s
    q = chunk_frames * s
    out = []
    for c in range(chunks):
        kv = context_valid * s + (c + 1) * q
        one = pass_cost(cfg, q, kv, buffer, text_tokens, chunk_frames, **kw)
        out.append([one] * (steps + (c < chunks - 1)))
    if context_valid:
        n = context_valid * s
        out[0] = [pass_cost(cfg, n, n, n, text_tokens, context_valid, **kw)] + out[0]
    return out


def roofline_seconds(passes: list[PassCost], vae_flops: float, peak: float, bandwidth: float,
                     dense: bool = False) -> float:
    """Lower bound on the time of `passes` and a VAE decode: per pass the max of compute and memory time."""
    t = 0.0
    for p in passes:
        flops = p.flops - p.self_executed + (p.self_dense if dense else p.self_executed)
        t += max(flops / peak, (p.weight_bytes + p.kv_bytes) / bandwidth)
    return t + vae_flops / peak


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


class ShotTiming(NamedTuple):
    text_encode_s: float
    per_chunk_s: list[float]
    first_frame_latency_s: float
    total_s: float
    frames: int


def time_shot(encode_text: Callable[[], Any], chunks: Callable[[], Iterator[Any]]) -> ShotTiming:
    """Time one shot as a viewer sees it: `encode_text()` (the prompt's text
    encoding, waited on), then `chunks()`, an iterator of each chunk's decoded
    frames [n, H, W, 3] as they become ready (host arrays, or device arrays
    that are waited on here: the only host syncs are these deliberate ones).

    per_chunk_s[c] runs from chunk c-1's frames (for c = 0: from the end of the
    text encoding, so it holds the shot's set-up, i.e. context encoding and
    context pass) to chunk c's frames; first_frame_latency_s from prompt in;
    total_s from prompt in to the iterator's end.
    """
    t_prompt = time.perf_counter()
    jax.block_until_ready(encode_text())
    t_prev = t_text = time.perf_counter()
    per_chunk, frames = [], 0
    for pixels in chunks():
        jax.block_until_ready(pixels)
        now = time.perf_counter()
        per_chunk.append(now - t_prev)
        t_prev = now
        frames += pixels.shape[0]
    if not per_chunk:
        raise ValueError("the shot yielded no frames")
    total = time.perf_counter() - t_prompt  # with the shot's wrap-up after its last frames
    return ShotTiming(t_text - t_prompt, per_chunk, t_text - t_prompt + per_chunk[0], total, frames)


def train_example_flops(cfg) -> tuple[int, int]:
    """(model FLOPs, DiT tokens) of one training example of a stage config, for MFU and tokens/s in training.

    A gradient pass costs 3 forward passes (forward, then backward through
    activations and weights). teacher / ode_init: one gradient pass over the
    context and target frames. DMD steps: the rollout's forward passes
    (`shot_flops`, the upper bound of all 4 steps), the backward of the
    generator's exit-step passes (2 chunk passes per chunk), the real score
    with CFG (2 passes) and the fake score (1 pass; 3 for the critic's
    gradient). dmd_inter first rolls out `train.num_shots - 1` history shots (forward only).
    """
    m, s, t = WanDiTConfig.from_dict(cfg.model), cfg.shotstream, cfg.train
    pt, ph, pw = m.patch_size
    sf = model_dir.encoder_vae_config(cfg).spatial_factor
    tpf = (cfg.video.height // sf // ph) * (cfg.video.width // sf // pw)
    fc, ft = s.context_frames, s.shot_latent_frames
    full = (fc + ft) * tpf
    one = dit_pass_flops(m, full, full, m.text_len, fc + ft)
    if cfg.stage in ("teacher", "ode_init"):
        return 3 * one, full
    chunks = ft // s.chunk_frames
    rollout = shot_flops(m, tpf, m.text_len, fc, s.chunk_frames, chunks, len(s.denoising_steps), fc)
    q = s.chunk_frames * tpf
    backward = sum(2 * dit_pass_flops(m, q, fc * tpf + (c + 1) * q, m.text_len, s.chunk_frames) for c in range(chunks))
    gen = rollout + backward + 3 * one
    critic = rollout + 3 * one
    per_shot = (gen + t.critic_steps * critic) // (t.critic_steps + 1)  # the generator : critic step mix
    history = t.num_shots - 1 if cfg.stage == "dmd_inter" else 0
    return history * rollout + per_shot, (history + 1) * ft * tpf
