"""shotstream-bench: time the streaming pipeline, shot by shot, chunk by chunk, and write JSON.

  shotstream-bench --model=toy --shots=2 --json=bench.json
  shotstream-bench --model=wan-1.3b-random --shots=5 --json=h100.json --profile_dir=/tmp/trace
  shotstream-bench --model=models/wan13b --height=480 --width=832

Per shot, as in generation: the prompt is encoded (text K/V computed once),
one context pass fills the global cache, then every chunk runs its denoising
passes, is decoded, and is committed to the local cache by one t=0 pass
(7 chunks x (4 + 1) + 1 = 36 DiT passes per shot at the default config).
Two untimed shots (the first, with an empty global cache, and a second, with
a context pass) compile everything; then --shots shots are timed from a fresh
cache.

--model: a model directory (shotstream-convert output), or random weights of
a named size: toy (2 layers, width 64), small-random (4 layers, width 256,
head dim 128), wan-1.3b-random, wan-14b-random.

JSON fields: fps (decoded frames per second over the timed shots, prompt in
to last frame), first_frame_latency_s (prompt in to the first decoded frame
of a shot; median over shots, and per shot), per_chunk_s (seconds of every
chunk, one list per shot), compile_s (the two warm-up shots' time minus the
first two timed shots'), text_encode_s, context_pass_s, peak_memory_bytes and
peak_memory_source, mfu and mfu_note (model FLOPs of the DiT passes, see
shotstream_jax/perf.py, over the DiT-side time and the device's dense bf16
peak; null on CPUs and unknown devices), flops_per_shot, device, config, and
notes on what was not included.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "toy", "Model directory, or random weights: toy | small-random | wan-1.3b-random | "
                    "wan-14b-random.")
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
# --model name -> (config size, DiT overrides) of random-weight models.
RANDOM_SIZES = {
    "toy": ("toy", {}),
    # Wan-like blocks (head dim 128) small enough that a CPU chunk takes tens of ms.
    "small-random": ("toy", dict(dim=256, ffn_dim=1024, num_heads=2, num_layers=4)),
    "wan-1.3b-random": ("wan_1_3b", {}),
    "wan-14b-random": ("wan_14b", {}),
}


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
    """(dit, config, stream shape, (height, width)) for --model, with the runtime flags applied."""
    from flax import nnx

    from shotstream_jax import model_dir
    from shotstream_jax.config import get_config
    from shotstream_jax.models.wan_dit import WanDiT, WanDiTConfig

    overrides = {k: v for k, v in dict(dtype=FLAGS.dtype, param_dtype=FLAGS.dtype, scan_unroll=FLAGS.scan_unroll,
                                       attention_impl=FLAGS.attention_impl).items() if v is not None}
    if model in RANDOM_SIZES:
        size, size_overrides = RANDOM_SIZES[model]
        cfg = get_config(size, "generate")
        dit_cfg = WanDiTConfig.from_dict({**cfg.model.to_dict(), **size_overrides, **overrides})
        dit = nnx.jit(lambda: WanDiT(dit_cfg, rngs=nnx.Rngs(seed)))()  # one compile, not one per parameter shape
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


def vae_for(model: str, dtype: str, seed: int):
    """The Wan VAE with random weights: full size for Wan models, narrow (base_dim 8) for toy ones.

    Filled on the host from the module's abstract shapes: eager init compiles a
    random kernel per parameter shape and a jitted init compiles for about a
    minute on a CPU, both longer than the benchmark itself at toy size.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from shotstream_jax.models.wan_vae import WanVAE, WanVAEConfig
    small = model in ("toy", "small-random")
    cfg = WanVAEConfig(base_dim=8 if small else 96, dtype=dtype)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def fill(x):  # kernels ~ N(0, 1/fan_in), vectors (biases, norm scales) 1
        if len(x.shape) < 2:
            return jnp.ones(x.shape, x.dtype)
        return jnp.asarray(rng.standard_normal(x.shape, np.float32) / np.sqrt(np.prod(x.shape[:-1])), x.dtype)

    return nnx.merge(graphdef, jax.tree.map(fill, abstract))


def student_passes(dit, vae, cfg, shape: StreamShape, seed: int):
    """The pipeline's pieces as `perf.ShotPasses`: the student's jitted passes over a
    `DualCache` (models/student.py) and the VAE's streaming `decode_step`.

    As `pipeline.Session.next_shot`, except for inputs that need a tokenizer or
    a story: the prompt embedding is random umT5-shaped states (the DiT's text
    K/V are computed from them once per prompt, as in generation), and the
    history is random frames, VAE-encoded one frame per clip into the 6
    context latents before the context pass (shots after the first; the first
    shot's global cache stays empty and masked, as in the pipeline).
    Returns (passes, a function making a fresh empty cache).
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from shotstream_jax import context as ctx_lib
    from shotstream_jax import schedule
    from shotstream_jax.models import student
    from shotstream_jax.models.wan_vae import decode_step
    from shotstream_jax.perf import ShotPasses

    graphdef, state = nnx.split(dit)
    ss = cfg.shotstream
    theta = ctx_lib.shot_theta(ss)
    timesteps = jnp.asarray(schedule.student_timesteps(tuple(ss.denoising_steps), ss.timestep_shift), jnp.float32)
    key = jax.random.key(seed)
    b, (h, w) = shape.batch, shape.latent_hw
    sf = vae.cfg.spatial_factor
    text_kv = jax.jit(lambda state, emb: nnx.merge(graphdef, state).encode_text(emb))

    def encode_prompt(shot):
        emb = jax.random.normal(jax.random.fold_in(key, shot), (b, shape.text_len, dit.cfg.text_dim))
        return text_kv(state, emb)

    def context_pass(cache, text, shot):
        if shot == 0:
            return cache
        history = jax.random.uniform(jax.random.fold_in(key, 10_000 + shot),
                                     (shape.context_frames, 1, h * sf, w * sf, 3), minval=-1.0, maxval=1.0)
        latents = vae.cfg.normalize(vae.encode(history)[:, 0])[None]
        layout = ctx_lib.shot_layout([shot - 1] * shape.context_frames, shot, shape.shot_frames,
                                     shape.context_frames)
        return student.fill_global_cache(graphdef, state, cache, latents, text,
                                         jnp.asarray(layout.frame_shot[:shape.context_frames]), None, None, theta)

    def target_shot(shot):
        return jnp.asarray(max(shot, 1), jnp.int32)  # last context shot + 1; 1 for the first shot

    def denoise_chunk(cache, text, shot, chunk):
        k = jax.random.fold_in(jax.random.fold_in(key, shot), chunk)
        noise = jax.random.normal(k, (b, shape.chunk_frames, h, w, dit.cfg.in_channels))
        return student.denoise_chunk(graphdef, state, cache, noise, jax.random.fold_in(k, 1), text,
                                     target_shot(shot), theta, timesteps)

    def commit_chunk(cache, z, text, shot, chunk):
        return student.commit_chunk(graphdef, state, cache, z, text, target_shot(shot), theta)

    passes = ShotPasses(
        encode_prompt=encode_prompt, context_pass=context_pass, denoise_chunk=denoise_chunk,
        commit_chunk=commit_chunk, init_decode=lambda: vae.init_decode_cache(b, h, w),
        decode_chunk=lambda dec, z: decode_step(vae, vae.cfg.denormalize(z), dec))
    return passes, lambda: student.init_cache(dit.cfg, b, shape.latent_hw, context_frames=shape.context_frames,
                                              shot_frames=shape.shot_frames)


def bench(dit, vae, cfg, shape: StreamShape, video_hw, shots: int, seed: int, profile_dir: str | None) -> dict:
    import jax

    from shotstream_jax import perf

    passes, fresh_cache = student_passes(dit, vae, cfg, shape, seed)
    # Warm-up: the first shot (empty global cache) and a later one (context pass) compile everything.
    cache, warm = fresh_cache(), []
    for shot in range(2):
        cache, timing = perf.stream_shot(passes, cache, shot, shape.chunks)
        warm.append(timing.total_s)

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
    mfu_note = ("model FLOPs of the DiT passes (shotstream_jax/perf.py) / (context pass time, with its VAE "
                "encode, + chunk time, with the decode) / dense bf16 peak of the one device used")
    if c.dtype != "bfloat16":
        mfu_note += f"; this run computed in {c.dtype}"
    return {
        "fps": frames / total,
        "first_frame_latency_s": statistics.median(t.first_frame_latency_s for t in timings),
        "first_frame_latency_per_shot_s": [t.first_frame_latency_s for t in timings],
        "per_chunk_s": [t.per_chunk_s for t in timings],
        "compile_s": max(sum(warm) - timings[0].total_s - statistics.median(t.total_s for t in timings[1:] or timings),
                         0.0),
        "text_encode_s": statistics.median(t.text_encode_s for t in timings),
        "context_pass_s": [t.context_pass_s for t in timings],
        "seconds_per_shot": [t.total_s for t in timings],
        "frames_per_shot": [t.frames for t in timings],
        "peak_memory_bytes": mem,
        "peak_memory_source": mem_source,
        "mfu": None if peak is None else sum(flops) / dit_time / peak,
        "mfu_note": mfu_note if peak is not None else f"no peak FLOP/s known for {info['device_kind']!r}: mfu is null",
        "flops_per_shot": flops,
        "achieved_flops_per_s": sum(flops) / dit_time,
        **info,
        "pipeline": "models.student jitted passes over a DualCache + WanVAE streaming decode_step",
        "vae_decode": f"included: WanVAE base_dim {vae.cfg.base_dim}, random weights",
        "context_encode": "included in context_pass_s: VAE encode of 6 random history frames, shots after the first",
        "text_encoder": "not included: random umT5-shaped states; text_encode_s times the DiT text K/V projection",
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
    vae = vae_for(FLAGS.model, dit.cfg.dtype, FLAGS.seed)
    result = bench(dit, vae, cfg, shape, video_hw, FLAGS.shots, FLAGS.seed, FLAGS.profile_dir)
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
