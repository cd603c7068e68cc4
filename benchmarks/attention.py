"""Attention kernels at the student's shapes: pallas vs cudnn vs xla on GPU, tpu_splash vs xla on TPU.

B=1, H=12, D=128, bf16; Lq=4680 (one 3-frame chunk at 832x480) against
Lk = 4680 (the chunk alone), 9360 (6 frames, the size of the global cache),
42120 (27 frames: global + full local cache) and 512 (text cross-attention);
plus the 42120 buffer mid-shot ("cache/2"): a key length (MaskSpec.kv_len)
of 18 frames leaves the 9 unwritten local-cache frames out, as in the
student's fixed-size cache (its TFLOP/s count the nominal Lk, so stopping at
the prefix shows as a higher rate).
One line per (shape, impl, pass) with milliseconds and TFLOP/s, then the
pallas/cudnn time ratio. FLOPs: 4*B*H*Lq*Lk*D forward; forward+backward
counts 3.5x that (the backward's five matmuls against the forward's two).
Last, the table that decides `impl="auto"` (kernels/attention.py
`_auto_impl`): per shape and pass the fastest kernel measured, against what
`auto` picks now ("differs" where the rule should change), for
benchmarks/RESULTS.md.

Usage: python benchmarks/attention.py [--iters N] [--scale S]
Without a GPU or TPU it exits 0 with a message, unless --scale > 1: token
counts divided by S (a quick check of the script on any backend, xla only
on CPU).
"""
import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # a checkout needs no install
from shotstream_jax.kernels import MaskSpec, attention  # noqa: E402
from shotstream_jax.kernels.attention import _auto_impl  # noqa: E402

B, H, D, LQ = 1, 12, 128, 4680
FRAME = 1560  # tokens per latent frame at 832x480
# (name, Lk, written key frames of the buffer, None: all)
SHAPES = (("chunk", 4680, None), ("global", 9360, None), ("cache", 42120, None),
          ("cache/2", 42120, 18), ("cross", 512, None))
IMPLS = {"gpu": ("pallas", "cudnn", "xla"), "tpu": ("tpu_splash", "xla"), "cpu": ("xla",)}
PASSES = {"fwd": 1.0, "fwd+bwd": 3.5}


def _fn(impl: str, pass_name: str, mask):
    fwd = lambda q, k, v: attention(q, k, v, mask, impl=impl)
    if pass_name == "fwd":
        return jax.jit(fwd)
    loss = lambda q, k, v: fwd(q, k, v).astype(jnp.float32).sum()
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _time_ms(f, args, iters: int) -> float:
    jax.block_until_ready(f(*args))  # compile and warm up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--scale", type=int, default=1, help="divide the token counts by this (a quick check)")
    args = parser.parse_args()
    backend = jax.default_backend()
    if backend not in ("gpu", "tpu") and args.scale == 1:
        print(f"benchmarks/attention.py: no GPU or TPU backend (JAX default backend is "
              f"{backend!r}); nothing measured (--scale=S runs shapes S times smaller here).")
        return 0
    lq, frame = LQ // args.scale, FRAME // args.scale
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, "
          f"B={B} H={H} D={D} bf16, Lq={lq}")
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    rows = []  # (shape, Lk, pass, {impl: ms}, auto's pick)
    for shape_name, lk, written in SHAPES:
        lk = lk // args.scale if shape_name != "cross" else lk
        mask = None if written is None else MaskSpec(kv_len=jnp.full((B,), written * frame, jnp.int32))
        q = jax.random.normal(keys[0], (B, lq, H, D), jnp.bfloat16)
        k = jax.random.normal(keys[1], (B, lk, H, D), jnp.bfloat16)
        v = jax.random.normal(keys[2], (B, lk, H, D), jnp.bfloat16)
        fwd_flops = 4 * B * H * lq * lk * D
        for pass_name, factor in PASSES.items():
            ms = {}
            for impl in IMPLS.get(backend, ("xla",)):
                label = f"{shape_name:7s} Lk={lk:5d} {pass_name:7s} {impl:10s}"
                try:
                    ms[impl] = _time_ms(_fn(impl, pass_name, mask), (q, k, v), args.iters)
                except Exception as e:  # one failing impl (e.g. OOM) must not hide the others
                    print(f"{label}: failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                    continue
                tflops = factor * fwd_flops / (ms[impl] * 1e-3) / 1e12
                print(f"{label}: {ms[impl]:8.3f} ms  {tflops:6.1f} TFLOP/s")
            if "pallas" in ms and "cudnn" in ms:
                print(f"{shape_name:7s} Lk={lk:5d} {pass_name:7s} pallas/cudnn time: "
                      f"{ms['pallas'] / ms['cudnn']:.2f}x")
            rows.append((shape_name, lk, pass_name, ms, _auto_impl(q, k, mask)))
    print(f"\n`auto` on {jax.devices()[0].device_kind} ({backend}), ms:")
    print("| shape | Lk | pass | fastest | auto picks | auto / fastest |")
    print("|---|---|---|---|---|---|")
    for shape_name, lk, pass_name, ms, auto in rows:
        if not ms:
            continue
        best = min(ms, key=ms.get)
        ratio = f"{ms[auto] / ms[best]:.2f}x" if auto in ms else "not measured"
        flag = "" if auto == best else " (differs)"
        print(f"| {shape_name} | {lk} | {pass_name} | {best} {ms[best]:.3f} | {auto}{flag} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
