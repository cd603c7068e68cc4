"""shotstream-bench: time the streaming pipeline, shot by shot, chunk by chunk, and write JSON.

  shotstream-bench --model=toy --shots=2 --json=bench.json
  shotstream-bench --model=wan-1.3b-random --shots=5 --json=h100.json --profile_dir=/tmp/trace
  shotstream-bench --model=models/wan13b --height=480 --width=832

Per shot, as in generation: the prompt is encoded (text K/V computed once),
one context pass fills the global cache, then every chunk runs its denoising
passes, is decoded, and is committed to the local cache by one t=0 pass
(7 chunks x (4 + 1) + 1 = 36 DiT passes per shot at the default config).
A first, untimed shot compiles everything; then --shots shots are timed.

--model: a model directory (shotstream-convert output), or random weights of
a named size: toy (2 layers, width 64), wan-1.3b-random, wan-14b-random.

JSON fields: fps (decoded frames per second over the timed shots, prompt in
to last frame), first_frame_latency_s (prompt in to the first decoded frame
of a shot; median over shots, and per shot), per_chunk_s (seconds of every
chunk, one list per shot), compile_s (the warm-up shot's time minus a timed
shot's), text_encode_s, context_pass_s, peak_memory_bytes and
peak_memory_source, mfu and mfu_note (model FLOPs of the DiT passes, see
shotstream_jax/perf.py, over the DiT-side time and the device's dense bf16
peak; null on CPUs and unknown devices), flops_per_shot, device, config, and
notes on what was not included.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import statistics

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "toy", "Model directory, or random weights: toy | wan-1.3b-random | wan-14b-random.")
flags.DEFINE_integer("shots", 3, "Shots to time (after one untimed warm-up shot that compiles).")
flags.DEFINE_string("json", None, "Write the results here as JSON (they are always printed too).")
flags.DEFINE_string("profile_dir", None, "Capture a jax.profiler trace of the timed shots into this directory.")
flags.DEFINE_integer("height", None, "Video height in pixels (default: the size's config; multiple of 16).")
flags.DEFINE_integer("width", None, "Video width in pixels (default: the size's config; multiple of 16).")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                  "Parameters, activations and caches end to end (default: the size's config, bf16 for Wan sizes).")
flags.DEFINE_integer("scan_unroll", None, "Unroll factor of the scan over DiT blocks.")
flags.DEFINE_string("attention_impl", None, "Attention implementation (auto|xla|cudnn|pallas|...).")
flags.DEFINE_integer("seed", 0, "Seed of the random weights and noise.")

PROG = "shotstream-bench"
RANDOM_SIZES = {"toy": "toy", "wan-1.3b-random": "wan_1_3b", "wan-14b-random": "wan_14b"}


@dataclasses.dataclass(frozen=True)
class StreamShape:
    """Everything about a shot's layout the passes need, in latent frames and tokens."""
    batch: int
    latent_hw: tuple[int, int]
    context_frames: int
    chunk_frames: int
    chunks: int
    text_len: int

    @property
    def shot_frames(self) -> int:
        return self.chunk_frames * self.chunks


def build(model: str, seed: int):
    """(dit, config) for --model, with the runtime flags applied."""
    from flax import nnx

    from shotstream_jax import model_dir
    from shotstream_jax.config import get_config
    from shotstream_jax.models.wan_dit import WanDiT, WanDiTConfig

    overrides = {k: v for k, v in dict(dtype=FLAGS.dtype, param_dtype=FLAGS.dtype, scan_unroll=FLAGS.scan_unroll,
                                       attention_impl=FLAGS.attention_impl).items() if v is not None}
    if model in RANDOM_SIZES:
        cfg = get_config(RANDOM_SIZES[model], "generate")
        dit_cfg = WanDiTConfig.from_dict({**cfg.model.to_dict(), **overrides})
        dit = WanDiT(dit_cfg, rngs=nnx.Rngs(seed))
    elif os.path.isdir(model):
        cfg = get_config("wan_1_3b", "generate")
        dit = model_dir.load_dit(model, **overrides)
    else:
        raise ValueError(f"--model={model!r} is neither a model directory nor one of {sorted(RANDOM_SIZES)}; "
                         "convert PyTorch weights with shotstream-convert or pick a random size")
    height = FLAGS.height or cfg.video.height
    width = FLAGS.width or cfg.video.width
    if height % 16 or width % 16:
        raise ValueError(f"--height/--width {height}x{width} must be multiples of 16 (VAE 8x, patch 2x)")
    ss = cfg.shotstream
    if ss.shot_latent_frames % ss.chunk_frames:
        raise ValueError(f"shot of {ss.shot_latent_frames} latent frames is not a multiple of "
                         f"{ss.chunk_frames}-frame chunks")
    shape = StreamShape(batch=1, latent_hw=(height // 8, width // 8), context_frames=ss.context_frames,
                        chunk_frames=ss.chunk_frames, chunks=ss.shot_latent_frames // ss.chunk_frames,
                        text_len=dit.cfg.text_len)
    return dit, cfg, shape, (height, width)


def dit_passes(dit, cfg, shape: StreamShape, seed: int):
    """The streaming passes straight on WanDiT, with the student's real cache shapes.

    One K/V buffer per layer holds the global cache (context_frames frames) then
    the local cache (the shot's frames) [layers, B, (Nc + T) * S, H, Dh], with a
    validity mask over its slots and a traced count of committed frames, so
    every chunk and shot reuses one compile. The cache is donated to the passes
    that rewrite it. Decoding is a stub (see `stub_decode`).
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from shotstream_jax.kernels import MaskSpec
    from shotstream_jax.perf import ShotPasses

    c = dit.cfg
    graphdef, state = nnx.split(dit)
    dtype = jnp.dtype(c.dtype)
    s = (shape.latent_hw[0] // c.patch_size[1]) * (shape.latent_hw[1] // c.patch_size[2])
    ng = shape.context_frames * s
    slots = (shape.context_frames + shape.shot_frames) * s
    theta = cfg.shotstream.shot_theta if cfg.shotstream.shot_indicator else 0.0
    shift = cfg.shotstream.timestep_shift
    # Student timesteps: the configured steps warped through the shifted schedule, s' = k s / (1 + (k-1) s).
    sig = jnp.asarray(cfg.shotstream.denoising_steps, jnp.float32) / cfg.shotstream.num_train_timesteps
    sig = shift * sig / (1 + (shift - 1) * sig)
    key = jax.random.key(seed)
    b, (h, w) = shape.batch, shape.latent_hw

    cache = dict(k=jnp.zeros((c.num_layers, b, slots, c.num_heads, c.head_dim), dtype),
                 v=jnp.zeros((c.num_layers, b, slots, c.num_heads, c.head_dim), dtype),
                 valid=jnp.zeros((b, slots), bool), committed=jnp.zeros((), jnp.int32))

    def target_layout(shot, chunk):
        frames = chunk * shape.chunk_frames + jnp.arange(shape.chunk_frames)
        return shape.context_frames + frames, jnp.full((shape.chunk_frames,), shot + 1)

    @jax.jit
    def encode_prompt(state, shot):
        # Random umT5 states stand in for the text encoder; the DiT's text K/V are the real work here.
        text = jax.random.normal(jax.random.fold_in(key, shot), (b, shape.text_len, c.text_dim), dtype)
        return nnx.merge(graphdef, state).encode_text(text)

    @functools.partial(jax.jit, donate_argnums=1)
    def context_pass(state, cache, text_kv, shot):
        # History: context frames of the previous shot (none for the first shot: masked out).
        ctx = jax.random.normal(jax.random.fold_in(key, 1_000_000 + shot), (b, shape.context_frames, h, w, 16))
        _, (k, v) = nnx.merge(graphdef, state)(
            ctx, jnp.zeros((b,)), text_kv=text_kv, frame_pos=jnp.arange(shape.context_frames),
            frame_shot=jnp.full((shape.context_frames,), shot), shot_theta=theta, return_kv=True)
        valid = jnp.zeros((b, slots), bool).at[:, :ng].set(shot > 0)
        return dict(k=cache["k"].at[:, :, :ng].set(k.astype(dtype)), v=cache["v"].at[:, :, :ng].set(v.astype(dtype)),
                    valid=valid, committed=jnp.zeros((), jnp.int32))

    def velocity(state, cache, x, t, text_kv, shot, chunk, return_kv=False):
        pos, shots = target_layout(shot, chunk)
        mask = MaskSpec(kv_valid=jnp.concatenate([cache["valid"], jnp.ones((b, x.shape[1] * s), bool)], axis=1))
        return nnx.merge(graphdef, state)(
            x, t, text_kv=text_kv, frame_pos=pos, frame_shot=shots, shot_theta=theta,
            prefix_kv=(cache["k"], cache["v"]), mask=mask, return_kv=return_kv)

    @jax.jit
    def denoise_chunk(state, cache, text_kv, shot, chunk):
        k = jax.random.fold_in(jax.random.fold_in(key, shot), chunk)
        noise = jax.random.normal(k, (b, len(sig), shape.chunk_frames, h, w, 16))

        def step(x, i):  # predict x0, then re-noise it with fresh noise at the next step's level
            v = velocity(state, cache, x, jnp.full((b,), sig[i] * 1000.0), text_kv, shot, chunk)
            x0 = x.astype(jnp.float32) - sig[i] * v
            nxt = jnp.minimum(i + 1, len(sig) - 1)
            return jnp.where(i + 1 < len(sig), (1 - sig[nxt]) * x0 + sig[nxt] * noise[:, nxt], x0), None

        x0, _ = jax.lax.scan(step, noise[:, 0], jnp.arange(len(sig)))
        return x0

    @functools.partial(jax.jit, donate_argnums=1)
    def commit_chunk(state, cache, x0, text_kv, shot, chunk):
        _, (k, v) = velocity(state, cache, x0, jnp.zeros((b,)), text_kv, shot, chunk, return_kv=True)
        at = ng + cache["committed"] * s
        n = shape.chunk_frames * s
        upd = jax.lax.dynamic_update_slice_in_dim
        return dict(k=upd(cache["k"], k.astype(dtype), at, axis=2), v=upd(cache["v"], v.astype(dtype), at, axis=2),
                    valid=upd(cache["valid"], jnp.ones((b, n), bool), at, axis=1),
                    committed=cache["committed"] + shape.chunk_frames)

    init_decode, decode_chunk = stub_decode()
    passes = ShotPasses(
        encode_prompt=lambda shot: encode_prompt(state, shot),
        context_pass=lambda cache, text, shot: context_pass(state, cache, text, shot),
        denoise_chunk=lambda cache, text, shot, chunk: denoise_chunk(state, cache, text, shot, chunk),
        commit_chunk=lambda cache, z, text, shot, chunk: commit_chunk(state, cache, z, text, shot, chunk),
        init_decode=init_decode, decode_chunk=decode_chunk)
    return passes, lambda: jax.tree.map(jnp.copy, cache)


def stub_decode():
    """No VAE: a placeholder [B, n, 1, 1, 3] per chunk with the frame count the Wan VAE
    would decode (1 + 4(n-1) for a shot's first chunk, 4n after), computed from the
    chunk so that waiting on it waits for the chunk."""
    import jax.numpy as jnp

    def decode_chunk(started, z):
        n = 4 * z.shape[1] - (0 if started else 3)
        return jnp.broadcast_to(z[:, :1, :1, :1, :3], (z.shape[0], n, 1, 1, 3)), True

    return lambda: False, decode_chunk


def bench(dit, cfg, shape: StreamShape, video_hw, shots: int, seed: int, profile_dir: str | None) -> dict:
    import jax

    from shotstream_jax import perf

    passes, fresh_cache = dit_passes(dit, cfg, shape, seed)
    warm = perf.stream_shot(passes, fresh_cache(), 0, shape.chunks)[1]

    cache = fresh_cache()
    timings = []
    if profile_dir:
        jax.profiler.start_trace(profile_dir)
    try:
        for shot in range(shots):
            cache, timing = perf.stream_shot(passes, cache, shot, shape.chunks)
            timings.append(timing)
    finally:
        if profile_dir:
            jax.profiler.stop_trace()

    c = dit.cfg
    s = (shape.latent_hw[0] // c.patch_size[1]) * (shape.latent_hw[1] // c.patch_size[2])
    steps = len(cfg.shotstream.denoising_steps)
    flops = [perf.shot_flops(c, s, shape.text_len, shape.context_frames, shape.chunk_frames, shape.chunks, steps,
                             context_valid=shape.context_frames if shot > 0 else 0) for shot in range(shots)]
    dit_time = sum(t.context_pass_s + sum(t.per_chunk_s) for t in timings)
    info = perf.device_info()
    peak = perf.peak_flops(info["device_kind"])
    mem, mem_source = perf.peak_memory()
    frames = sum(t.frames for t in timings)
    total = sum(t.total_s for t in timings)
    mfu_note = ("model FLOPs of the DiT passes (shotstream_jax/perf.py) / (context pass + chunk time) / "
                "dense bf16 peak of one device" + ("" if c.dtype == "bfloat16" else f"; this run computed in {c.dtype}"))
    return {
        "fps": frames / total,
        "first_frame_latency_s": statistics.median(t.first_frame_latency_s for t in timings),
        "first_frame_latency_per_shot_s": [t.first_frame_latency_s for t in timings],
        "per_chunk_s": [t.per_chunk_s for t in timings],
        "compile_s": max(warm.total_s - statistics.median(t.total_s for t in timings), 0.0),
        "text_encode_s": statistics.median(t.text_encode_s for t in timings),
        "context_pass_s": [t.context_pass_s for t in timings],
        "seconds_per_shot": [t.total_s for t in timings],
        "frames_per_shot": [t.frames for t in timings],
        "peak_memory_bytes": mem,
        "peak_memory_source": mem_source,
        "mfu": None if peak is None else sum(flops) / dit_time / (peak * jax.device_count()),
        "mfu_note": mfu_note if peak is not None else f"no peak FLOP/s known for {info['device_kind']!r}: mfu is null",
        "flops_per_shot": flops,
        "achieved_flops_per_s": sum(flops) / dit_time,
        **info,
        "pipeline": "DiT passes on WanDiT with the student's cache shapes (benchmark harness, not the student module)",
        "vae_decode": "not included (stub)",
        "text_encoder": "not included: random umT5 states; text_encode_s times the DiT text K/V projection",
        "config": {"model": FLAGS.model, "dit": dataclasses.asdict(c), "height": video_hw[0], "width": video_hw[1],
                   "shots": shots, "batch": shape.batch, "latent_hw": list(shape.latent_hw),
                   "tokens_per_frame": s, "context_frames": shape.context_frames,
                   "chunk_frames": shape.chunk_frames, "chunks_per_shot": shape.chunks,
                   "denoising_steps": list(cfg.shotstream.denoising_steps), "text_len": shape.text_len},
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from shotstream_jax.cli.common import fail
    if FLAGS.shots < 1:
        raise app.UsageError("--shots must be at least 1")
    try:
        dit, cfg, shape, video_hw = build(FLAGS.model, FLAGS.seed)
    except (ValueError, OSError) as e:
        return fail(PROG, str(e))
    result = bench(dit, cfg, shape, video_hw, FLAGS.shots, FLAGS.seed, FLAGS.profile_dir)
    for k in ("device", "fps", "first_frame_latency_s", "compile_s", "text_encode_s", "peak_memory_bytes", "mfu"):
        print(f"{k}: {result[k]}")
    for i, chunk_s in enumerate(result["per_chunk_s"], 1):
        print(f"shot {i} per-chunk s: {' '.join(f'{x:.4f}' for x in chunk_s)}")
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def run():
    app.run(main)


if __name__ == "__main__":
    run()
