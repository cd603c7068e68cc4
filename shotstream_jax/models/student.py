"""The causal 4-step student with ShotStream's dual KV cache.

A shot of T latent frames (21) is generated chunk by chunk (3 frames). Every
self-attention query of a chunk sees
    keys = concat(global cache, local cache, this chunk)
  * global cache: roped K/V of the context frames (6 frames sampled from past
    shots), written once per shot by a t=0 pass over the context latents in
    which the context frames attend only to each other;
  * local cache: roped K/V of this shot's finished chunks, each written by a
    t=0 "commit" pass over the chunk's final x0 after its denoising steps.
Per chunk: 4 denoising passes + 1 commit; per shot 7 x (4 + 1) + 1 = 36 passes, or 35 in
inference, where the last chunk of a shot is not committed (no later chunk reads it).

RoPE (`context.shot_layout`): context frames at positions 0..5 with their
source shot index, target frames at 6 + frame index within the shot with shot
index = last context shot + 1 (`causal_model.py`: start_frame =
current_start_frame + condition frames). Context tokens are always at t=0.

Caches are fixed-size buffers in a `DualCache` pytree with a traced context
length and write index, passed into and returned from the jitted functions
(donated), so one compile serves every chunk and every shot. Every pass writes
its K/V in place at the write index and attends to the buffer's prefix, so the
keys are never concatenated. An empty global cache (first shot) is left out of
the prefix (the local cache starts at offset 0) rather than attended to; the original instead runs its
context pass over 6 all-zero latents in shot 0 (`causal_inference_ar.py`),
which `fill_global_cache` reproduces when given zero latents marked valid.

Two kinds of entry points:
  * on an `nnx` module (`context_pass`, `chunk_velocity`, `denoise`,
    `commit`, `full_sequence_velocity`), to be composed inside a caller's
    transform (training);
  * jitted on (graphdef, state) (`fill_global_cache`, `chunk_step`: a
    chunk's pending commit and its denoising steps in one call, and
    `commit_chunk`) and the Python drivers `shot_chunks` / `generate_shot`
    (inference), plus `rollout_shot` for Self-Forcing training.
"""
from __future__ import annotations

import functools
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
from flax import nnx, struct

from shotstream_jax import schedule
from shotstream_jax.kernels import MaskSpec
from shotstream_jax.models.wan_dit import KVCache, TextKV, WanDiT, WanDiTConfig


@struct.dataclass
class DualCache:
    """Student KV caches in one buffer per K and V, roped, [layers, B, (context_frames + shot_frames) * frame_tokens,
    H, Dh]: the global cache (the valid context frames) then the local cache (this shot's frames).

    The valid keys are always a prefix of the buffer, [0, write_index): a pass
    writes its own K/V in place at the write index and attends to the prefix
    (`MaskSpec.kv_len`), so nothing is ever concatenated or copied. With an
    empty global cache (masked first shot) the local cache starts at offset 0.
    """
    k: jax.Array
    v: jax.Array
    context_len: jax.Array  # int32 []: tokens of valid context at the front of the buffer
    num_local: jax.Array  # int32 []: frames of this shot committed so far
    frame_tokens: int = struct.field(pytree_node=False)
    context_frames: int = struct.field(pytree_node=False)

    @property
    def shot_frames(self) -> int:
        return self.k.shape[2] // self.frame_tokens - self.context_frames

    @property
    def global_tokens(self) -> int:
        """Capacity of the global cache in tokens."""
        return self.context_frames * self.frame_tokens

    @property
    def global_valid(self) -> jax.Array:
        """bool [global_tokens]: which context slots hold K/V that passes see."""
        return jnp.arange(self.global_tokens) < self.context_len

    @property
    def global_k(self):
        return self.k[:, :, :self.global_tokens]

    @property
    def global_v(self):
        return self.v[:, :, :self.global_tokens]

    @property
    def local_k(self):
        """This shot's slots [layers, B, shot_frames * frame_tokens, H, Dh] (from context_len on)."""
        return jax.lax.dynamic_slice_in_dim(self.k, self.context_len, self.shot_frames * self.frame_tokens, 2)

    @property
    def local_v(self):
        return jax.lax.dynamic_slice_in_dim(self.v, self.context_len, self.shot_frames * self.frame_tokens, 2)

    @property
    def write_index(self) -> jax.Array:
        """Token offset of the next chunk: after the valid context and the committed frames."""
        return self.context_len + self.num_local * self.frame_tokens

    def write(self, k: jax.Array, v: jax.Array, start) -> "DualCache":
        """Store k, v [layers, B, n, H, Dh] at token offset `start` (may be traced)."""
        return self.replace(
            k=jax.lax.dynamic_update_slice_in_dim(self.k, k.astype(self.k.dtype), start, axis=2),
            v=jax.lax.dynamic_update_slice_in_dim(self.v, v.astype(self.v.dtype), start, axis=2))

    def nbytes(self) -> int:
        return sum(x.nbytes for x in jax.tree.leaves(self))


def frame_tokens(cfg: WanDiTConfig, latent_hw: tuple[int, int]) -> int:
    _, ph, pw = cfg.patch_size
    return (latent_hw[0] // ph) * (latent_hw[1] // pw)


def init_cache(cfg: WanDiTConfig, batch: int, latent_hw: tuple[int, int], dtype=None,
               context_frames: int = 6, shot_frames: int = 21) -> DualCache:
    """Empty caches (global cache masked out, write index 0). dtype defaults to the compute dtype."""
    ft = frame_tokens(cfg, latent_hw)
    shape = (cfg.num_layers, batch, (context_frames + shot_frames) * ft, cfg.num_heads, cfg.head_dim)
    dtype = jnp.dtype(dtype or cfg.dtype)
    return DualCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32),
                     jnp.zeros((), jnp.int32), ft, context_frames)


# ---------------------------------------------------------------- passes on a module


def context_pass(dit: WanDiT, cache: DualCache, latents: jax.Array, text_kv: TextKV, frame_shot: jax.Array,
                 frame_prompt: Optional[jax.Array] = None, valid: Optional[jax.Array] = None,
                 shot_theta=0.0) -> DualCache:
    """Write the global cache from the context latents at t=0 and empty the local cache.

    Args:
      latents: f32[B, Nc, h, w, 16], Nc = cache.context_frames.
      text_kv: per-layer text K/V [layers, B, L, H, Dh], or [layers, B, P, L, H, Dh]
        with `frame_prompt` int32[Nc] (multi-caption: each frame its shot's prompt).
        Keep P fixed (e.g. pad to Nc prompts) for one compile across shots.
      frame_shot: int32[Nc] RoPE shot index of every context frame.
      valid: bool[Nc] or bool[B, Nc]. The global cache holds the leading run of
        frames valid in every example (all-False: an empty global cache, as
        the masked first shot); later frames are never seen.
    """
    b, nc = latents.shape[:2]
    if nc != cache.context_frames:
        raise ValueError(f"context latents have {nc} frames, the global cache holds {cache.context_frames}")
    ft = cache.frame_tokens
    if valid is None:
        n_valid = jnp.asarray(nc, jnp.int32)
    else:
        valid = jnp.asarray(valid, bool).reshape(-1, nc).all(axis=0)
        n_valid = jnp.sum(jnp.cumprod(valid.astype(jnp.int32)))
    # With no valid frame the pass attends to everything (no empty softmax); its K/V are never read.
    seen = jnp.where(n_valid > 0, n_valid, nc) * ft
    _, (k, v) = dit(latents, jnp.zeros((b, nc)), text_kv=text_kv, frame_prompt=frame_prompt,
                    frame_pos=jnp.arange(nc), frame_shot=jnp.asarray(frame_shot), shot_theta=shot_theta,
                    mask=MaskSpec(kv_len=jnp.full((b,), seen, jnp.int32)), return_kv=True)
    cache = cache.write(k, v, 0)
    return cache.replace(context_len=n_valid * ft, num_local=jnp.zeros((), jnp.int32))


def chunk_velocity(dit: WanDiT, cache: DualCache, x: jax.Array, t: jax.Array, text_kv: TextKV, target_shot,
                   shot_theta=0.0) -> tuple[jax.Array, DualCache]:
    """Velocity of the next chunk given the caches; x f32[B, n, h, w, 16], t f32[B, n].

    The chunk sits right after the committed frames: RoPE positions
    context_frames + num_local + [0, n), shot index `target_shot`. Its roped K/V
    are written into the cache at the write index (without advancing it) and
    its queries see the buffer's prefix up to and including itself.
    Returns (velocity [B, n, h, w, 16], the cache holding this chunk's K/V in its slot).
    """
    b, n = x.shape[:2]
    start = cache.write_index
    pos = cache.context_frames + cache.num_local + jnp.arange(n)
    shot = jnp.full((n,), target_shot, jnp.int32)
    kv_len = jnp.full((b,), start + n * cache.frame_tokens, jnp.int32)
    vel, kv = dit(x, t, text_kv=text_kv, frame_pos=pos, frame_shot=shot, shot_theta=shot_theta,
                  kv_cache=KVCache(cache.k, cache.v, start), mask=MaskSpec(kv_len=kv_len))
    return vel, cache.replace(k=kv.k, v=kv.v)


def commit(dit: WanDiT, cache: DualCache, x0: jax.Array, text_kv: TextKV, target_shot,
           shot_theta=0.0) -> DualCache:
    """The t=0 pass over a finished chunk x0 [B, n, h, w, 16]: its clean K/V overwrite the chunk's slot,
    and the write index moves past it."""
    b, n = x0.shape[:2]
    _, cache = chunk_velocity(dit, cache, x0, jnp.zeros((b, n)), text_kv, target_shot, shot_theta)
    return cache.replace(num_local=cache.num_local + n)


def step_x0(dit: WanDiT, cache: DualCache, x: jax.Array, i, timesteps: jax.Array, text_kv: TextKV, target_shot,
            shot_theta) -> tuple[jax.Array, DualCache]:
    """Denoising step i of the chunk x [B, n, h, w, 16]: x0 = x - sigma_i v at t = timesteps[i], and the
    cache holding the chunk's K/V in its slot (the write index does not move)."""
    b, n = x.shape[:2]
    ts = jnp.asarray(timesteps, jnp.float32)
    v, cache = chunk_velocity(dit, cache, x, jnp.full((b, n), ts[i]), text_kv, target_shot, shot_theta)
    return (x.astype(jnp.float32) - schedule.sigma_of(ts)[i] * v).astype(x.dtype), cache


def exit_input(dit: WanDiT, cache: DualCache, noise: jax.Array, key: jax.Array, text_kv: TextKV, target_shot,
               shot_theta, timesteps: jax.Array, exit_step) -> tuple[jax.Array, DualCache]:
    """Steps 0..exit_step-1 of one chunk -> (the input of step `exit_step`, the cache).

    Each step predicts x0 (`step_x0`) and re-noises it with FRESH noise
    (normal(fold_in(key, i))) to the next timestep. exit_step may be traced.
    """
    sig = schedule.sigma_of(jnp.asarray(timesteps, jnp.float32))

    def step(i, carry):
        x, cache = carry
        eps = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        x0, cache = step_x0(dit, cache, x, i, timesteps, text_kv, target_shot, shot_theta)
        return schedule.add_noise_sigma(x0, eps, sig[i + 1]), cache

    return jax.lax.fori_loop(0, exit_step, step, (noise, cache))


def denoise(dit: WanDiT, cache: DualCache, noise: jax.Array, key: jax.Array, text_kv: TextKV, target_shot,
            shot_theta, timesteps: jax.Array, exit_step) -> tuple[jax.Array, DualCache]:
    """Few-step sampling of one chunk; returns (the x0 predicted at step `exit_step`, the cache).

    Every pass writes the chunk's K/V into its slot of the cache (the commit
    pass overwrites them later); the write index does not move. Inference:
    exit_step = len(timesteps) - 1. noise f32[B, n, h, w, 16]; timesteps f32[S].
    """
    x, cache = exit_input(dit, cache, noise, key, text_kv, target_shot, shot_theta, timesteps, exit_step)
    return step_x0(dit, cache, x, exit_step, timesteps, text_kv, target_shot, shot_theta)


def full_sequence_velocity(dit: WanDiT, context_latents: Optional[jax.Array], shot_latents: jax.Array,
                           t: jax.Array, text_kv: TextKV, layout, *, shot_theta=0.0, chunk_frames: int = 3,
                           return_kv: bool = False):
    """One block-causal forward over concat(context, whole shot): the reference for the cached path.

    Context frames (t=0, chunk -1) see only each other; shot frame f is in
    chunk f // chunk_frames and sees the context and chunks <= its own.
    `context_latents=None` is the masked-out first-shot context: only the
    last T entries of `layout` are used (positions still start after the
    context slots).
    Args:
      shot_latents: f32[B, T, h, w, 16]; t: f32[B, T] per-frame timesteps.
      text_kv: [layers, B, L, H, Dh], or [layers, B, P, L, H, Dh] routed by layout.frame_prompt.
      layout: `context.ShotLayout` (frame_pos, frame_shot, frame_prompt over context + shot frames).
    Returns:
      velocity of the shot frames f32[B, T, h, w, 16] (and (k, v) [layers, B, N, H, Dh] of all tokens).
    """
    b, nt = shot_latents.shape[:2]
    nc = 0 if context_latents is None else context_latents.shape[1]
    pos, shot, prompt = (jnp.asarray(a, jnp.int32)[-(nc + nt):] for a in layout)
    x = shot_latents if nc == 0 else jnp.concatenate([context_latents.astype(shot_latents.dtype), shot_latents], 1)
    ft = frame_tokens(dit.cfg, shot_latents.shape[2:4])
    tt = jnp.concatenate([jnp.zeros((b, nc)), jnp.asarray(t, jnp.float32)], axis=1)
    chunk = jnp.repeat(jnp.concatenate([jnp.full((nc,), -1), jnp.arange(nt) // chunk_frames]), ft)
    multi = text_kv.k.ndim == 6
    out = dit(x, tt, text_kv=text_kv, frame_prompt=prompt if multi else None, frame_pos=pos, frame_shot=shot,
              shot_theta=shot_theta, mask=MaskSpec(q_chunk=chunk, kv_chunk=chunk), return_kv=return_kv)
    if return_kv:
        return out[0][:, nc:], out[1]
    return out[:, nc:]


# ---------------------------------------------------------------- jitted inference


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def fill_global_cache(graphdef, state, cache: DualCache, latents, text_kv: TextKV, frame_shot,
                      frame_prompt=None, valid=None, shot_theta=0.0) -> DualCache:
    """Jitted `context_pass` on `nnx.split(dit)`; the cache's buffers are donated."""
    return context_pass(nnx.merge(graphdef, state), cache, latents, text_kv, frame_shot, frame_prompt,
                        valid, shot_theta)


def chunk_pass(dit: WanDiT, cache: DualCache, pending: Optional[jax.Array], noise, key, text_kv: TextKV,
               target_shot, shot_theta, timesteps, exit_step=None) -> tuple[jax.Array, DualCache]:
    """One chunk of inference: commit `pending` (the previous chunk's x0, or None), then denoise this one.

    Deferring a chunk's commit to the next chunk's call keeps one call per
    chunk while a chunk's x0 (and its frames) never waits for its own commit
    pass, and the last chunk of a shot, whose K/V nobody reads, is never
    committed. Returns (x0 f32[B, n, h, w, 16], cache).
    """
    if pending is not None:
        cache = commit(dit, cache, pending, text_kv, target_shot, shot_theta)
    exit_step = len(timesteps) - 1 if exit_step is None else exit_step
    return denoise(dit, cache, noise, key, text_kv, target_shot, shot_theta, timesteps, exit_step)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def chunk_step(graphdef, state, cache: DualCache, pending, noise, key, text_kv: TextKV, target_shot, shot_theta,
               timesteps, exit_step=None) -> tuple[jax.Array, DualCache]:
    """Jitted `chunk_pass` on `nnx.split(dit)`: one dispatch per chunk; the cache's buffers are donated."""
    return chunk_pass(nnx.merge(graphdef, state), cache, pending, noise, key, text_kv, target_shot, shot_theta,
                      timesteps, exit_step)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def commit_chunk(graphdef, state, cache: DualCache, x0, text_kv: TextKV, target_shot, shot_theta) -> DualCache:
    """Jitted `commit` alone (a shot's last chunk, when its K/V are wanted); the cache is donated."""
    return commit(nnx.merge(graphdef, state), cache, x0, text_kv, target_shot, shot_theta)


def shot_noise(key: jax.Array, cache: DualCache, batch: int, latent_hw: tuple[int, int],
               channels: int = 16) -> tuple[jax.Array, jax.Array]:
    """(initial noise f32[B, T, h, w, C] of a whole shot, the key for re-noising) from one shot key."""
    k_noise, k_steps = jax.random.split(key)
    return jax.random.normal(k_noise, (batch, cache.shot_frames, *latent_hw, channels)), k_steps


def shot_chunks(graphdef, state, cache: DualCache, key: jax.Array, text_kv: TextKV, target_shot: int, *,
                shot_theta, timesteps, chunk_frames: int = 3, latent_hw: tuple[int, int],
                batch: int = 1) -> Iterator[tuple[jax.Array, DualCache]]:
    """Generate one shot chunk by chunk (global cache already filled), one `chunk_step` per chunk.

    Yields (x0 chunk, cache); the cache then holds the commits of the chunks
    before this one (this chunk is committed by the next step; pass the last
    x0 to `commit_chunk` if the shot's full local cache is wanted). Chunk c
    uses noise[:, 3c:3c+3] of `shot_noise(key)` and re-noise key fold_in(k_steps, c).
    """
    if cache.shot_frames % chunk_frames:
        raise ValueError(f"shot of {cache.shot_frames} latent frames is not a multiple of {chunk_frames}-frame chunks")
    noise, k_steps = shot_noise(key, cache, batch, latent_hw)
    target_shot = jnp.asarray(target_shot, jnp.int32)
    shot_theta = jnp.asarray(shot_theta, jnp.float32)
    timesteps = jnp.asarray(timesteps, jnp.float32)
    x0 = None
    for c in range(cache.shot_frames // chunk_frames):
        x0, cache = chunk_step(graphdef, state, cache, x0, noise[:, c * chunk_frames:(c + 1) * chunk_frames],
                               jax.random.fold_in(k_steps, c), text_kv, target_shot, shot_theta, timesteps)
        yield x0, cache


def generate_shot(graphdef, state, cache: DualCache, key, text_kv, target_shot, **kw) -> tuple[jax.Array, DualCache]:
    """All chunks of `shot_chunks`, the last one committed too -> (latents f32[B, T, h, w, 16], cache)."""
    chunks = []
    for x0, cache in shot_chunks(graphdef, state, cache, key, text_kv, target_shot, **kw):
        chunks.append(x0)
    cache = commit_chunk(graphdef, state, cache, chunks[-1], text_kv, target_shot, kw["shot_theta"])
    return jnp.concatenate(chunks, axis=1), cache


# ---------------------------------------------------------------- training rollout


def rollout_shot(graphdef, state, cache: DualCache, noise: jax.Array, key: jax.Array, text_kv: TextKV,
                 target_shot, exit_step, shot_theta, timesteps, chunk_frames: int = 3, grad: bool = True):
    """Self-Forcing rollout of one shot for DMD (global cache already filled, e.g. by `context_pass`).

    Every chunk runs its denoising steps up to `exit_step` (traced int, shared
    by all chunks) and is committed; gradients w.r.t. `state` and `text_kv`
    flow only through each chunk's exit-step prediction, as in the reference
    (`self_forcing_training.py`: the earlier steps and the cache passes under
    no_grad). Chunk c re-noises with fold_in(fold_in(key, c), i), as
    `shot_chunks` does with its step key.

    So that the backward pass keeps one cache, not one per chunk, the rollout
    runs twice over: first entirely on stop_gradient(state), remembering each
    chunk's input to its exit step; then (with `grad`) the exit predictions
    again, chunk by chunk, with gradient, from the FINAL cache: chunk c's exit
    pass sees exactly the keys it saw in the rollout (the global cache and the
    commits of chunks < c, which no later pass overwrites, then its own K/V),
    so both give the same latents. `grad=False` (nothing to differentiate,
    e.g. the critic's update) skips the second pass.
    Args:
      noise: f32[B, T, h, w, 16] initial noise of the shot.
    Returns:
      (latents f32[B, T, h, w, 16], cache, timestep_from int32[], timestep_to int32[])
      where from/to are the original's `denoised_timestep_from/to`:
      1000 - table index of the exit step's timestep and of the next one (0 after the last step).
    """
    b, nt = noise.shape[:2]
    nchunks = nt // chunk_frames
    ts = jnp.asarray(timesteps, jnp.float32)
    chunks = jnp.moveaxis(noise.reshape(b, nchunks, chunk_frames, *noise.shape[2:]), 1, 0)
    frozen_state, frozen_text = jax.lax.stop_gradient((state, text_kv))

    def rollout(cache, xs):
        c, chunk_noise = xs
        dit = nnx.merge(graphdef, frozen_state)
        x, cache = exit_input(dit, cache, chunk_noise, jax.random.fold_in(key, c), frozen_text, target_shot,
                              shot_theta, ts, exit_step)
        x0, cache = step_x0(dit, cache, x, exit_step, ts, frozen_text, target_shot, shot_theta)
        return commit(dit, cache, x0, frozen_text, target_shot, shot_theta), (x, x0)

    cache, (x_exit, out) = jax.lax.scan(rollout, jax.lax.stop_gradient(cache), (jnp.arange(nchunks), chunks))

    def exit_pass(_, xs):
        c, x = xs
        before_c = cache.replace(num_local=c * chunk_frames)
        return None, step_x0(nnx.merge(graphdef, state), before_c, x, exit_step, ts, text_kv, target_shot,
                             shot_theta)[0]

    if grad:
        _, out = jax.lax.scan(exit_pass, None, (jnp.arange(nchunks), x_exit))
    latents = jnp.moveaxis(out, 0, 1).reshape(noise.shape)
    n = schedule.NUM_TRAIN_TIMESTEPS
    idx = schedule.table_index(ts)
    last = exit_step >= ts.shape[0] - 1
    t_from = n - idx[exit_step]
    t_to = jnp.where(last, 0, n - idx[jnp.minimum(exit_step + 1, ts.shape[0] - 1)])
    return latents, cache, t_from, t_to
