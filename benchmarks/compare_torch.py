"""The Wan DiT forward in PyTorch (diffusers, eager and torch.compile) vs our jitted JAX path.

Same shapes and weights as benchmarks/dit_forward.py (4 blocks, dim 512, 4
heads of 128, latents [1, 3, 60, 104, 16], text [1, 512, 4096]). The device is
detected: a CUDA GPU when torch has one (torch's CUDA build) and JAX sees a
GPU, run in bfloat16; else the CPU in float32. Prints one line per system with
the median of --repeats timed calls (after warm-up/compilation), then the
ratios against JAX. If torch.compile fails here, its error is printed in one
line and the comparison goes on without it.

Usage: python benchmarks/compare_torch.py [--repeats N] [--no_compile] [--layers N]
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


def device():
    """('cuda', bf16) when both frameworks see a GPU, else ('cpu', f32)."""
    if torch.cuda.is_available() and jax.default_backend() == "gpu":
        return "cuda", torch.bfloat16, "bfloat16", 5e-2
    return "cpu", torch.float32, "float32", 1e-3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers", type=int, default=MID["layers"])
    ap.add_argument("--no_compile", action="store_true", help="skip torch.compile (it takes minutes on CPU)")
    args = ap.parse_args()

    dev, tdtype, jdtype, tol = device()
    print(f"machine: {machine()}; device {dev}, {jdtype}")
    tm = torch_model(**{**MID, "layers": args.layers})
    dit = jax_copy(tm, dtype=jdtype, param_dtype=jdtype)
    tm = tm.to(dev) if tdtype == torch.float32 else tm.to(dev, tdtype)
    x, t, text = inputs()
    targs = torch_inputs(x, t, text, dev, tdtype)
    fwd = jax_forward(dit)

    def sync_torch(r):
        if dev == "cuda":
            torch.cuda.synchronize()
        return r

    systems = {"jax jit": (lambda: fwd(x, t, text), jax.block_until_ready),
               "torch eager": (lambda: tm(*targs, return_dict=False)[0], sync_torch)}
    if not args.no_compile:
        compiled = torch.compile(tm)
        systems["torch.compile"] = (lambda: compiled(*targs, return_dict=False)[0], sync_torch)

    results, reference = {}, None
    with torch.no_grad():
        for name, (fn, sync) in list(systems.items()):
            t0 = time.perf_counter()
            try:
                out = sync(fn())
            except Exception as e:  # noqa: BLE001 - report any compile failure and go on
                print(f"{name}: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                del systems[name]
                continue
            print(f"{name} warm-up (compile + first run): {time.perf_counter() - t0:.2f} s")
            out = np.asarray(out.float().cpu().numpy().transpose(0, 2, 3, 4, 1) if torch.is_tensor(out)
                             else out, np.float32)
            if reference is None:
                reference = out
            else:
                err = float(np.max(np.abs(out - reference)) / np.max(np.abs(reference)))
                print(f"{name} vs jax: max relative difference {err:.2e}")
                if err > tol:
                    raise SystemExit(f"{name} disagrees with JAX ({err:.2e} > {tol}): not the same function")
        times = {name: [] for name in systems}
        for _ in range(args.repeats):  # interleaved, so machine load hits every system alike
            for name, (fn, sync) in systems.items():
                times[name].append(seconds(fn, sync))
    for name, ts in times.items():
        results[name] = float(np.median(ts))
        print(f"{name} forward: {results[name] * 1e3:.1f} ms (median of {len(ts)}; "
              f"all {', '.join(f'{s * 1e3:.0f}' for s in ts)})")
    for name in results:
        if name != "jax jit":
            print(f"ratio {name} / jax jit: {results[name] / results['jax jit']:.2f}x (>1: JAX faster)")


if __name__ == "__main__":
    main()
