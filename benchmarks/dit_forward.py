"""One DiT forward, jitted JAX vs PyTorch eager (diffusers), same weights, same machine (issue 8).

Config: 4 Wan blocks, dim 512, 4 heads of 128, ffn 2048, text_dim 4096;
latents [1, 3, 60, 104, 16] (one 3-frame chunk at 832x480: 4680 tokens), text
[1, 512, 4096]. The diffusers model is built with random weights, saved, and
loaded into our WanDiT with `convert.load_wan_dit`, so both compute the same
function; the outputs are compared before anything is timed.

The two systems are timed alternately (JAX, torch, JAX, ...) so that load from
other processes on a shared machine hits both alike; the median is reported.

Usage: python benchmarks/dit_forward.py [--repeats N]
"""
import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import torch  # noqa: E402

from benchmarks.torch_pair import (MID, inputs, jax_copy, jax_forward, machine, seconds,  # noqa: E402
                                   torch_inputs, torch_model)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}")
    tm = torch_model(**MID)
    dit = jax_copy(tm)
    x, t, text = inputs()
    fwd = jax_forward(dit)
    targs = torch_inputs(x, t, text)

    t0 = time.perf_counter()
    out_jax = jax.block_until_ready(fwd(x, t, text))
    print(f"jax compile+first run: {time.perf_counter() - t0:.2f} s")
    with torch.no_grad():
        out_torch = tm(*targs, return_dict=False)[0].numpy().transpose(0, 2, 3, 4, 1)
    err = float(np.max(np.abs(np.asarray(out_jax) - out_torch)) / np.max(np.abs(out_torch)))
    print(f"max |jax - torch| / max |torch|: {err:.2e}")
    if err > 1e-3:
        raise SystemExit(f"outputs disagree (relative error {err:.2e}): the timings would compare different functions")

    jax_times, torch_times = [], []
    with torch.no_grad():
        for _ in range(args.repeats):
            jax_times.append(seconds(lambda: fwd(x, t, text), jax.block_until_ready))
            torch_times.append(seconds(lambda: tm(*targs, return_dict=False)[0], lambda r: r))
    tj, tt = float(np.median(jax_times)), float(np.median(torch_times))
    for name, median, times in (("jax jit", tj, jax_times), ("torch eager", tt, torch_times)):
        print(f"{name} forward: {median:.3f} s (median of {args.repeats}; all {', '.join(f'{s:.3f}' for s in times)})")
    print(f"ratio torch/jax: {tt / tj:.2f}x (>1: JAX faster)")


if __name__ == "__main__":
    main()
