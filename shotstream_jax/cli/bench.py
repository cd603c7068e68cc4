"""shotstream-bench: time the streaming pipeline, shot by shot, chunk by chunk, and write JSON.

  shotstream-bench --model=toy --shots=2 --json=bench.json
  shotstream-bench --model=wan-1.3b-random --shots=5 --json=h100.json --profile_dir=/tmp/trace
  shotstream-bench --model=models/wan13b --height=480 --width=832
  shotstream-bench --model=wan-1.3b-random --dry_run     # static cost report and roofline FPS, no GPU

It drives the real pipeline (`pipeline.ShotStream`, a session, `next_shot`
per prompt): per shot the prompt is encoded by umT5 (timed alone as
text_encode_s), the context frames sampled from the story so far are
VAE-encoded and one context pass fills the global cache, then each of the 7
chunks runs, in one jitted call, the previous chunk's cache pass, its own 4
denoising passes and the streaming VAE decode to uint8 frames (35 DiT passes
per shot: the last chunk is not committed), read back one chunk later. Two untimed
shots in a separate session (the first, with an empty global cache, and a
second, with a context pass) compile everything; then --shots shots are timed
in a fresh session.

--model: a model directory (shotstream-convert output with DiT, VAE, umT5 and
tokenizer), or random weights: toy (the bundled default model: 2 layers,
width 64, tiny VAE and umT5, byte tokenizer), small-random (the same with 4
blocks of width 256, head dim 128), wan-1.3b-random and wan-14b-random (full
Wan DiT and VAE, umT5-XXL layers over a byte vocabulary, bf16 by default).

JSON fields: fps (decoded frames per second over the timed shots, prompt in to
last frame), first_frame_latency_s (prompt in to the first decoded frame of a
shot; median over shots, and per shot), per_chunk_s (seconds of every chunk,
one list per shot; a shot's first chunk also holds its context encode and
context pass), compile_s (the two warm-up shots' time minus the first two
timed shots'), text_encode_s, peak_memory_bytes and peak_memory_source, mfu
and mfu_note (model FLOPs of the DiT passes, formula in shotstream_jax/perf.py,
over the shots' time after text encoding and the device's dense bf16 peak;
null on CPUs and unknown devices), flops_per_shot, device, config; with
--time_vae also vae_decode_chunk_s and fps_without_vae.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time

from absl import app, flags

from shotstream_jax.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "toy", "Model directory, or random weights: toy | small-random | wan-1.3b-random | "
                    "wan-14b-random.")
flags.DEFINE_integer("shots", 3, "Shots to time (after two untimed warm-up shots that compile).")
flags.DEFINE_string("json", None, "Write the results here as JSON (they are always printed too).")
flags.DEFINE_string("profile_dir", None, "Capture a jax.profiler trace of the timed shots into this directory.")
flags.DEFINE_integer("height", None, "Video height in pixels (default: the size's config; multiple of 16).")
flags.DEFINE_integer("width", None, "Video width in pixels (default: the size's config; multiple of 16).")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "fp8"],
                  "Parameters, activations and caches end to end (default: the size's config, bf16 for Wan sizes); "
                  "fp8: bf16 with the DiT blocks' linear layers as E4M3 matmuls (per-tensor scales).")
flags.DEFINE_integer("scan_unroll", None, "Unroll factor of the scan over DiT blocks.")
flags.DEFINE_string("attention_impl", None, "Attention implementation (auto|xla|cudnn|pallas|...).")
flags.DEFINE_boolean("time_vae", False, "Also time the VAE's decode of one later chunk alone (jitted, to uint8, median "
                     "of 5 on random latents) and report vae_decode_chunk_s and fps_without_vae: the timed shots' "
                     "frames over their time less every chunk's decode (one more compile).")
common.define_compilation_cache_flag("none, so that compile_s is a cold compile")
flags.DEFINE_integer("seed", 0, "Seed of the random weights and noise.")
flags.DEFINE_boolean("dry_run", False, "Print the static cost report instead of running: per chunk, DiT FLOPs split "
                     "into matmuls, cross-attention and self-attention (useful / executed by a prefix-bounded kernel "
                     "/ dense over the whole cache buffer), VAE decode FLOPs (XLA cost analysis), weight and K/V "
                     "bytes, and roofline FPS on H100, H200, A100, v5p and v6e. Loads no weights (random sizes "
                     "only), needs no accelerator.")

PROG = "shotstream-bench"
# --model name -> (config size, DiT overrides) of random-weight models.
RANDOM_SIZES = {
    "toy": ("toy", {}),
    # The default model with wider Wan-like blocks (head dim 128): a CPU chunk takes a fraction of a second.
    "small-random": ("toy", dict(dim=256, ffn_dim=1024, num_heads=2, num_layers=4)),
    "wan-1.3b-random": ("wan_1_3b", {}),
    "wan-14b-random": ("wan_14b", {}),
}


def random_weights(make, seed: int):
    """The module `make()` builds, with random weights made on the device from its abstract shapes:
    matrices ~ N(0, 1/fan_in), vectors (biases, norm scales) 1. One small jitted sampler per distinct
    shape: initialising umT5-XXL under one jit compiled for 44 s on an H200, and an eager init
    compiles one random kernel per parameter (minutes on a CPU)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    samplers = {}

    def sampler(shape, dtype):
        scale = 1.0 / np.sqrt(np.prod(shape[:-1]))
        return jax.jit(lambda key: (jax.random.normal(key, shape, jnp.float32) * scale).astype(dtype))

    leaves, treedef = jax.tree.flatten(abstract)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    filled = []
    for key, x in zip(keys, leaves):
        if len(x.shape) < 2:
            filled.append(jnp.ones(x.shape, x.dtype))
            continue
        spec = (tuple(x.shape), jnp.dtype(x.dtype))
        if spec not in samplers:
            samplers[spec] = sampler(*spec)
        filled.append(samplers[spec](key))
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, filled))


def dtype_overrides() -> dict:
    """DiT config fields set by --dtype."""
    if FLAGS.dtype is None:
        return {}
    if FLAGS.dtype == "fp8":
        return dict(dtype="bfloat16", param_dtype="bfloat16", fp8=True)
    return dict(dtype=FLAGS.dtype, param_dtype=FLAGS.dtype)


def load(model: str, seed: int):
    """(config, dit, vae, text_encoder) for --model, with the runtime flags applied."""
    import jax
    from flax import nnx

    from shotstream_jax import default_model, model_dir
    from shotstream_jax.config import get_config
    from shotstream_jax.models.umt5 import UMT5Config, UMT5Encoder
    from shotstream_jax.models.wan_dit import WanDiT, WanDiTConfig
    from shotstream_jax.models.wan_vae import WanVAE, WanVAEConfig
    from shotstream_jax.text import ByteTokenizer, TextEncoder

    overrides = dtype_overrides()
    overrides.update({k: v for k, v in dict(scan_unroll=FLAGS.scan_unroll,
                                            attention_impl=FLAGS.attention_impl).items() if v is not None})
    if model in RANDOM_SIZES:
        size, size_overrides = RANDOM_SIZES[model]
        if size == "toy":  # the bundled default model (fixed random weights, byte tokenizer, tiny umT5)
            return default_model.build(**size_overrides, **overrides)
        config = get_config(size, "generate")
        dit_cfg = WanDiTConfig.from_dict({**config.model.to_dict(), **overrides})
        if jax.default_backend() != "cpu":  # built in bf16 (ShotStream would convert them once anyway)
            dit_cfg = dataclasses.replace(dit_cfg, param_dtype=overrides.get("param_dtype", dit_cfg.dtype))
        dit = nnx.jit(lambda: WanDiT(dit_cfg, rngs=nnx.Rngs(seed)))()  # one compile, not one per weight shape
        vae = random_weights(lambda: WanVAE(WanVAEConfig(dtype=dit_cfg.dtype), rngs=nnx.Rngs(0)), seed + 1)
        # umT5-XXL layers with a byte vocabulary: the encoder's cost without a tokenizer file.
        t5_cfg = UMT5Config.from_size("xxl", vocab_size=ByteTokenizer.vocab_size, dtype=dit_cfg.dtype,
                                      param_dtype=dit_cfg.dtype)
        t5 = random_weights(lambda: UMT5Encoder(t5_cfg, rngs=nnx.Rngs(0)), seed + 2)
        return config, dit, vae, TextEncoder(t5, ByteTokenizer(), text_len=dit_cfg.text_len)
    if os.path.isdir(model):
        return model_dir.load_pipeline(model, **overrides)
    raise ValueError(f"--model={model!r} is neither a model directory nor one of {sorted(RANDOM_SIZES)}; "
                     "convert PyTorch weights with shotstream-convert or pick a random size")


def configs(model: str):
    """(generate config, DiT config, VAE config) of a random size, without building anything."""
    from shotstream_jax import default_model
    from shotstream_jax.config import get_config
    from shotstream_jax.models.wan_dit import WanDiTConfig
    from shotstream_jax.models.wan_vae import WanVAEConfig

    if model not in RANDOM_SIZES:
        raise ValueError(f"--dry_run needs a random size ({sorted(RANDOM_SIZES)}), got --model={model!r}")
    size, size_overrides = RANDOM_SIZES[model]
    config = get_config(size, "generate")
    overrides = dtype_overrides()
    dit_cfg = WanDiTConfig.from_dict({**config.model.to_dict(), **size_overrides, **overrides})
    vae_cfg = default_model.VAE if size == "toy" else WanVAEConfig(dtype=dit_cfg.dtype)
    return config, dit_cfg, vae_cfg


def vae_decode_flops(vae_cfg, latent_frames: int, latent_hw: tuple[int, int]) -> float:
    """XLA's cost analysis of decoding a later chunk of `latent_frames` latents (abstract shapes)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from shotstream_jax.kernels.attention import single_key_block
    from shotstream_jax.models.wan_vae import DecodeCache, WanVAE
    graphdef, state = nnx.split(nnx.eval_shape(lambda: WanVAE(vae_cfg, rngs=nnx.Rngs(0))))
    empty = jax.eval_shape(lambda st: nnx.merge(graphdef, st).init_decode_cache(1, *latent_hw), state)
    z = jax.ShapeDtypeStruct((1, latent_frames, *latent_hw, vae_cfg.z_dim), jnp.float32)
    decode = jax.jit(lambda st, z, c: nnx.merge(graphdef, st).decode_chunk(z, c))
    with single_key_block():
        analysis = decode.trace(state, z, DecodeCache(empty.feats, started=True)).lower().cost_analysis()
    return float((analysis[0] if isinstance(analysis, list) else analysis)["flops"])


def cost_report(model: str, height: int | None, width: int | None) -> dict:
    """The static cost of a shot, chunk by chunk, and its roofline FPS on named accelerators."""
    from shotstream_jax import perf

    config, c, vae_cfg = configs(model)
    height, width = height or config.video.height, width or config.video.width
    ss = config.shotstream
    sf = vae_cfg.spatial_factor
    latent_hw = (height // sf, width // sf)
    s = (latent_hw[0] // c.patch_size[1]) * (latent_hw[1] // c.patch_size[2])
    chunks = ss.shot_latent_frames // ss.chunk_frames
    steps = len(ss.denoising_steps)
    nbytes = 2 if c.dtype == "bfloat16" else 4
    kw = dict(param_bytes=nbytes, kv_bytes=nbytes)
    shots = {"first shot (empty global cache)": 0, "later shots (full context)": ss.context_frames}
    vae = vae_decode_flops(vae_cfg, ss.chunk_frames, latent_hw)
    frames = 1 + 4 * (ss.shot_latent_frames - 1)
    report = {"model": model, "video": f"{width}x{height}", "tokens_per_frame": s, "dtype": c.dtype,
              "vae_decode_flops_per_chunk": vae, "shots": {}}
    for name, valid in shots.items():
        per_chunk = perf.shot_costs(c, s, c.text_len, ss.context_frames, ss.chunk_frames, chunks, steps, valid, **kw)
        total = lambda field: sum(getattr(p, field) for passes in per_chunk for p in passes)
        fps = {}
        for dev, (peak, bw) in perf.ROOFLINE_DEVICES.items():
            t = sum(perf.roofline_seconds(p, vae, peak, bw) for p in per_chunk)
            t_dense = sum(perf.roofline_seconds(p, vae, peak, bw, dense=True) for p in per_chunk)
            fps[dev] = {"fps": frames / t, "fps_dense_attention": frames / t_dense}
        report["shots"][name] = {
            "passes_per_chunk": [len(p) for p in per_chunk],
            "flops_per_chunk": [sum(p.flops for p in passes) for passes in per_chunk],
            "matmul_flops": total("matmul"), "cross_attention_flops": total("cross_attn"),
            "self_attention_useful_flops": total("self_useful"),
            "self_attention_executed_flops": total("self_executed"),
            "self_attention_dense_flops": total("self_dense"),
            "vae_decode_flops": vae * chunks, "weight_bytes": total("weight_bytes"), "kv_bytes": total("kv_bytes"),
            "roofline": fps}
    return report


def print_report(r: dict) -> None:
    print(f"static cost of one shot: {r['model']} at {r['video']}, {r['tokens_per_frame']} tokens per latent frame, "
          f"{r['dtype']}")
    for name, sh in r["shots"].items():
        print(f"{name}: passes per chunk {sh['passes_per_chunk']}")
        for key in ("matmul_flops", "cross_attention_flops", "self_attention_useful_flops",
                    "self_attention_executed_flops", "self_attention_dense_flops", "vae_decode_flops"):
            print(f"  {key}: {sh[key] / 1e12:.3f} TFLOP")
        print(f"  weight_bytes read: {sh['weight_bytes'] / 1e9:.2f} GB; kv_bytes read: {sh['kv_bytes'] / 1e9:.2f} GB")
        for dev, f in sh["roofline"].items():
            print(f"  roofline {dev}: {f['fps']:.1f} fps (dense-mask attention: {f['fps_dense_attention']:.1f} fps)")


def vae_chunk_seconds(pipe, repeats: int = 5) -> float:
    """Median seconds of the streaming VAE decode of one later chunk (to uint8), alone in its own jitted call."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from shotstream_jax.pipeline import to_uint8

    @jax.jit
    def decode(state, z, cache):
        frames, cache = nnx.merge(pipe._vae_graphdef, state).decode_chunk(z, cache)
        return to_uint8(frames[0]), cache

    z = jax.random.normal(jax.random.PRNGKey(0), (1, pipe.chunk_frames, *pipe.latent_hw, pipe.vae.cfg.z_dim))
    _, cache = decode(pipe._vae_state, z, pipe.vae.init_decode_cache(1, *pipe.latent_hw))  # the first chunk
    jax.block_until_ready(decode(pipe._vae_state, z, cache))  # compiles the later-chunk kind
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(decode(pipe._vae_state, z, cache))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(pipe, shots: int, seed: int, profile_dir: str | None) -> dict:
    """Stream `shots` shots through a `pipeline.ShotStream` session and collect the figures."""
    import jax

    from shotstream_jax import perf
    from shotstream_jax.text import shot_prompt

    caption = "A benchmark story in a quiet harbour town."

    def run_shots(session, n, tag):
        out = []
        for i in range(n):  # prompts differ between sessions: the text encoder caches by prompt
            prompt = f"{tag} shot {i + 1}: the camera moves along the harbour."
            out.append(perf.time_shot(
                lambda: pipe.text_encoder.encode(shot_prompt(caption, i, prompt)),  # next_shot reuses it
                lambda: session.next_shot(prompt)))
            # a line per shot as it ends: a run stopped early (a time limit) still shows its figures
            print(f"{tag.lower()} shot {i + 1}/{n}: {out[-1].frames} frames in {out[-1].total_s:.2f} s, "
                  f"first frame {out[-1].first_frame_latency_s:.3f} s", file=sys.stderr, flush=True)
        return out

    # Warm-up: the first shot (empty global cache) and a second (context encode + pass) compile everything.
    warm = run_shots(pipe.session(caption, seed=seed), 2, "Warm-up")
    if profile_dir:
        jax.profiler.start_trace(profile_dir, create_perfetto_trace=True)  # a JSON trace too (trace_summary.py)
    try:
        timings = run_shots(pipe.session(caption, seed=seed + 1), shots, "Timed")
    finally:
        if profile_dir:
            jax.profiler.stop_trace()

    c = pipe.dit.cfg
    s = (pipe.latent_hw[0] // c.patch_size[1]) * (pipe.latent_hw[1] // c.patch_size[2])
    steps = len(pipe.timesteps)
    flops = [perf.shot_flops(c, s, c.text_len, pipe.context_frames, pipe.chunk_frames, pipe.chunks_per_shot, steps,
                             context_valid=pipe.context_frames if shot > 0 else 0) for shot in range(shots)]
    dit_time = sum(sum(t.per_chunk_s) for t in timings)
    info = perf.device_info()
    peak = perf.peak_flops(info["device_kind"])
    mem, mem_source = perf.peak_memory()
    mfu_note = ("model FLOPs of the DiT passes (shotstream_jax/perf.py) / the shots' time after text encoding "
                "(context encode and pass, chunks, decode) / dense bf16 peak of the one device used")
    if c.dtype != "bfloat16":
        mfu_note += f"; this run computed in {c.dtype}"
    later = [t.total_s for t in timings[1:]] or [timings[0].total_s]
    return {
        "fps": sum(t.frames for t in timings) / sum(t.total_s for t in timings),
        "first_frame_latency_s": statistics.median(t.first_frame_latency_s for t in timings),
        "first_frame_latency_per_shot_s": [t.first_frame_latency_s for t in timings],
        "per_chunk_s": [t.per_chunk_s for t in timings],
        "compile_s": max(warm[0].total_s + warm[1].total_s - timings[0].total_s - statistics.median(later), 0.0),
        "text_encode_s": statistics.median(t.text_encode_s for t in timings),
        "seconds_per_shot": [t.total_s for t in timings],
        "frames_per_shot": [t.frames for t in timings],
        "peak_memory_bytes": mem,
        "peak_memory_source": mem_source,
        "mfu": None if peak is None else sum(flops) / dit_time / peak,
        "mfu_note": mfu_note if peak is not None else f"no peak FLOP/s known for {info['device_kind']!r}: mfu is null",
        "flops_per_shot": flops,
        "achieved_flops_per_s": sum(flops) / dit_time,
        **info,
        "pipeline": "shotstream_jax.pipeline.ShotStream session: umT5 text encoding, VAE-encoded context, "
                    "student passes over a DualCache, streaming VAE decode to uint8 frames on the host",
        "config": {"model": FLAGS.model, "dit": dataclasses.asdict(c), "vae": dataclasses.asdict(pipe.vae.cfg),
                   "umt5": dataclasses.asdict(pipe.text_encoder.model.cfg), "height": pipe.height,
                   "width": pipe.width, "shots": shots, "latent_hw": list(pipe.latent_hw), "tokens_per_frame": s,
                   "context_frames": pipe.context_frames, "chunk_frames": pipe.chunk_frames,
                   "chunks_per_shot": pipe.chunks_per_shot, "timesteps": [float(t) for t in pipe.timesteps],
                   "text_len": c.text_len},
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from shotstream_jax.cli.common import fail
    if FLAGS.shots < 1:
        raise app.UsageError("--shots must be at least 1")
    if FLAGS.dry_run:
        try:
            report = cost_report(FLAGS.model, FLAGS.height, FLAGS.width)
        except ValueError as e:
            return fail(PROG, str(e))
        print_report(report)
        return write_json(report)
    from shotstream_jax.pipeline import ShotStream
    common.use_compilation_cache(None)
    try:
        config, dit, vae, text_encoder = load(FLAGS.model, FLAGS.seed)
        config.video.height = FLAGS.height or config.video.height
        config.video.width = FLAGS.width or config.video.width
        pipe = ShotStream(config, dit, vae, text_encoder)
    except (ValueError, OSError) as e:
        return fail(PROG, str(e))
    result = bench(pipe, FLAGS.shots, FLAGS.seed, FLAGS.profile_dir)
    for k in ("device", "fps", "first_frame_latency_s", "compile_s", "text_encode_s", "peak_memory_bytes", "mfu"):
        print(f"{k}: {result[k]}")
    for i, chunk_s in enumerate(result["per_chunk_s"], 1):
        print(f"shot {i} per-chunk s: {' '.join(f'{x:.4f}' for x in chunk_s)}", flush=True)
    if FLAGS.time_vae:  # after the figures above: its own compile must not hold them back
        vae_s = vae_chunk_seconds(pipe)
        dit_s = sum(result["seconds_per_shot"]) - vae_s * sum(len(c) for c in result["per_chunk_s"])
        result.update(vae_decode_chunk_s=vae_s, fps_without_vae=sum(result["frames_per_shot"]) / dit_s)
        for k in ("vae_decode_chunk_s", "fps_without_vae"):
            print(f"{k}: {result[k]}")
    return write_json(result)


def write_json(result: dict) -> int:
    from shotstream_jax.cli.common import fail
    if FLAGS.json:
        try:
            with open(FLAGS.json, "w") as f:
                json.dump(result, f, indent=1)
        except OSError as e:
            return fail(PROG, f"--json={FLAGS.json}: {e.strerror}; give a path in a writable directory")
    return 0


def run():
    common.run(main, __name__)


if __name__ == "__main__":
    run()
