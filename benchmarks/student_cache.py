"""Student per-chunk time and memory across the shots of a story: caches must not grow.

Generates shots 1..N of a story (N=5) with the jitted cache functions, after
a warm-up shot that absorbs compilation. Then, so that a shared machine's load
hits both alike, the shots 1 and N are re-run from their filled caches in
alternation (`--rounds` times) and each chunk (4 denoising passes + the
commit pass) is timed. Prints, for shot 1 and shot N, the median per-chunk
seconds, the cache buffer bytes and the device memory in use
(`memory_stats()` where the backend has it, else the bytes of all live
arrays, which include the story's growing history latents), then the
shotN/shot1 ratios. Shot 1 runs with an empty (masked) global cache, later
shots with 6 context frames sampled from their history.

Usage: python benchmarks/student_cache.py [--size tiny|small] [--latent 8x8] [--rounds 3]
"""
import argparse
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # a checkout needs no install
from shotstream_jax import context, schedule  # noqa: E402
from shotstream_jax.models import student  # noqa: E402
from shotstream_jax.models.wan_dit import TextKV, WanDiT, WanDiTConfig  # noqa: E402

SIZES = {
    "tiny": dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2),
    "small": dict(dim=256, ffn_dim=512, num_heads=4, num_layers=4),
}


def device_bytes() -> tuple[int, str]:
    stats = jax.devices()[0].memory_stats()
    if stats and "bytes_in_use" in stats:
        return stats["bytes_in_use"], "memory_stats bytes_in_use"
    return sum(x.nbytes for x in jax.live_arrays()), "live array bytes"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small", choices=sorted(SIZES))
    ap.add_argument("--latent", default="8x8", help="latent HxW")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    hw = tuple(int(x) for x in args.latent.split("x"))
    cfg = WanDiTConfig(**SIZES[args.size], freq_dim=64, text_dim=64, text_len=32)
    dit = WanDiT(cfg, rngs=nnx.Rngs(0))
    gd, st = nnx.split(dit)
    tkv = dit.encode_text(jax.random.normal(jax.random.PRNGKey(1), (1, 6, cfg.text_len, cfg.text_dim)))
    ts = schedule.student_timesteps()
    shot_frames, chunk = 21, 3

    cache = student.init_cache(cfg, 1, hw)
    shots, filled, mem = [], {}, {}

    def run_shot(cache, s, lay):
        """Chunks of shot s from a filled cache: (latents, cache, per-chunk seconds)."""
        times, out = [], []
        t0 = time.perf_counter()
        for x0, cache in student.shot_chunks(gd, st, cache, jax.random.PRNGKey(s + 10),
                                             TextKV(tkv.k[:, :, s], tkv.v[:, :, s]), lay.target_shot,
                                             shot_theta=1 / 6, timesteps=ts, latent_hw=hw, chunk_frames=chunk):
            jax.block_until_ready((x0, cache))
            t1 = time.perf_counter()
            times.append(t1 - t0)
            t0 = t1
            out.append(x0)
        return jnp.concatenate(out, 1), cache, times

    for s in range(-1, args.shots):  # shot -1: warm-up (compiles), not reported
        i = max(s, 0)
        picks = context.sample_context([shot_frames] * len(shots))
        lay = context.shot_layout([a for a, _ in picks], i, shot_frames)
        if picks:
            ctx, valid = jnp.stack([shots[a][:, f] for a, f in picks], 1), jnp.ones((1, 6), bool)
        else:
            ctx, valid = jnp.zeros((1, 6, *hw, 16)), jnp.zeros((1, 6), bool)
        cache = student.fill_global_cache(gd, st, cache, ctx, tkv, lay.frame_shot[:6], lay.frame_prompt[:6],
                                          valid, 1 / 6)
        if s + 1 in (1, args.shots):  # kept on the host, out of the device-bytes figure
            filled[s + 1] = (jax.device_get(cache), i, lay)
        lat, cache, _ = run_shot(cache, i, lay)
        if s >= 0:
            shots.append(lat)
            mem[s + 1] = (cache.nbytes(), *device_bytes())

    last = args.shots
    times = {1: [], last: []}
    for _ in range(args.rounds):
        for s in (1, last):
            c, i, lay = filled[s]
            times[s] += run_shot(jax.device_put(c), i, lay)[2]

    print(f"device: {jax.devices()[0].device_kind}, model {args.size} {cfg.num_layers}x{cfg.dim}, "
          f"latent {hw[0]}x{hw[1]}, {shot_frames} frames/shot, chunk {chunk}, {len(times[1])} chunks timed per shot")
    med = {s: statistics.median(t) for s, t in times.items()}
    for s in (1, last):
        cbytes, dbytes, how = mem[s]
        print(f"shot {s}: per-chunk seconds (median) {med[s]:.4f}")
        print(f"shot {s}: cache bytes {cbytes}")
        print(f"shot {s}: device bytes ({how}) {dbytes}")
    print(f"ratio shot{last}/shot1 per-chunk seconds {med[last] / med[1]:.3f}")
    print(f"ratio shot{last}/shot1 cache bytes {mem[last][0] / mem[1][0]:.3f}")
    print(f"ratio shot{last}/shot1 device bytes {mem[last][1] / mem[1][1]:.3f}")


if __name__ == "__main__":
    main()
