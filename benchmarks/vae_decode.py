"""CPU benchmark: decoding one 3-latent-frame chunk with the Wan2.1 VAE, JAX vs diffusers (torch eager).

Real Wan2.1 channel widths (base_dim 96, dim_mult 1,2,4,4, z_dim 16), random
weights shared by both (diffusers model saved, then loaded with
`convert.load_wan_vae`), small spatial size so it runs on a laptop-class CPU.

  python -m benchmarks.vae_decode [--latent_h 8 --latent_w 13 --repeats 3 --threads 1]

Prints one line per figure: seconds per chunk for
  * the first chunk of a shot (3 latents -> 9 frames; what diffusers' decode does),
    for JAX (jitted, after warm-up) and torch, and their ratio;
  * a later chunk (3 latents -> 12 frames), JAX only (diffusers always starts a fresh cache);
and the max abs difference between the two decodes.
"""
import argparse
import os
import tempfile
import time

import numpy as np


def _best_interleaved(fns, repeats):
    """Best-of-`repeats` seconds per function, the functions taking turns so
    that load from other processes on a shared machine hits all of them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--latent_h", type=int, default=8)
    ap.add_argument("--latent_w", type=int, default=13)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0,
                    help="if > 0: CPU threads for both (1 is robust to other load on a shared machine)")
    args = ap.parse_args()
    if args.threads:
        # Must be set before jax is imported.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                                   + ("false" if args.threads == 1 else "true")
                                   + f" intra_op_parallelism_threads={args.threads}")

    import diffusers
    import jax
    import jax.numpy as jnp
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from shotstream_jax import convert
    from shotstream_jax.models.wan_vae import decode_step

    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLWan().eval()  # Wan2.1 defaults
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        vae = convert.load_wan_vae(d)

    h, w = args.latent_h, args.latent_w
    z = np.random.default_rng(0).normal(size=(1, 3, h, w, 16)).astype(np.float32)
    zj = jnp.asarray(z)
    zt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(z, -1, 1)))
    print(f"config: Wan2.1 VAE widths, chunk 3 latents {h}x{w} -> pixels {8 * h}x{8 * w}, "
          f"devices jax={jax.devices()[0].platform} torch_threads={torch.get_num_threads()}")

    cache0 = vae.init_decode_cache(1, h, w)

    def jax_first():
        return jax.block_until_ready(decode_step(vae, zj, cache0))

    t0 = time.perf_counter()
    first, cache1 = jax_first()
    print(f"jax first-chunk compile+run: {time.perf_counter() - t0:.2f} s")

    def jax_next():
        return jax.block_until_ready(decode_step(vae, zj, cache1))

    t0 = time.perf_counter()
    jax_next()
    print(f"jax later-chunk compile+run: {time.perf_counter() - t0:.2f} s")

    def torch_first():
        with torch.no_grad():
            return ref.decode(zt).sample

    want = torch_first()  # warm-up
    t_jax, t_torch, t_next = _best_interleaved([jax_first, torch_first, jax_next], args.repeats)

    diff = np.abs(np.asarray(first) - np.moveaxis(want.numpy(), 1, -1)).max()
    print(f"jax first chunk (9 frames): {t_jax:.3f} s")
    print(f"torch diffusers first chunk (9 frames): {t_torch:.3f} s")
    print(f"ratio torch/jax: {t_torch / t_jax:.2f}x")
    print(f"jax later chunk (12 frames): {t_next:.3f} s ({12 / t_next:.1f} frames/s)")
    print(f"max abs diff jax vs torch: {diff:.2e}")


if __name__ == "__main__":
    main()
