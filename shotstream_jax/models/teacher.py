"""The bidirectional next-shot teacher: WanDiT over FrameConcat(context, noisy target).

As in the public code (`model/flow_matching.py`, `Teacher_Ode_Sample.py`):
  * one self-attention over context + target frames, no new parameters;
  * ONE timestep for every frame, the clean context frames included (they are
    fed at the target's t, not at t=0);
  * multi-caption: frame f cross-attends to prompt `frame_prompt[f]` (its
    source shot; the target's own prompt for target frames);
  * RoPE positions / shot indices from `context.shot_layout`;
  * loss: MSE between the target frames' velocity and eps - x0, times the
    table's training weight of t (`FlowMatchScheduler.training_weight`).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from shotstream_jax import schedule
from shotstream_jax.models.wan_dit import TextKV, WanDiT


def teacher_velocity(dit: WanDiT, context_latents: jax.Array, noisy_target: jax.Array, t: jax.Array,
                     text: Optional[jax.Array] = None, *, text_kv: Optional[TextKV] = None,
                     frame_prompt: Optional[jax.Array] = None, frame_pos: Optional[jax.Array] = None,
                     frame_shot: Optional[jax.Array] = None, shot_theta: float = 0.0) -> jax.Array:
    """Velocity of the target frames.

    Args:
      context_latents: f32[B, Nc, h, w, 16] clean context latents.
      noisy_target: f32[B, T, h, w, 16].
      t: f32[B] timestep of all frames.
      text / text_kv: [B, P, L, text_dim] prompts with `frame_prompt` int32[Nc + T],
        or one prompt [B, L, text_dim] for every frame (frame_prompt None).
      frame_pos, frame_shot: int32[Nc + T] (a `context.ShotLayout`).
    Returns:
      f32[B, T, h, w, 16].
    """
    x = jnp.concatenate([context_latents.astype(noisy_target.dtype), noisy_target], axis=1)
    v = dit(x, t, text, text_kv=text_kv, frame_prompt=frame_prompt, frame_pos=frame_pos,
            frame_shot=frame_shot, shot_theta=shot_theta)
    return v[:, context_latents.shape[1]:]


def teacher_loss(dit: WanDiT, key: jax.Array, context_latents: jax.Array, target_latents: jax.Array,
                 text: Optional[jax.Array] = None, *, text_kv: Optional[TextKV] = None,
                 frame_prompt=None, frame_pos=None, frame_shot=None, shot_theta: float = 0.0,
                 shift: float = 8.0, weighted: bool = True, foreground_weight: float = 0.0
                 ) -> tuple[jax.Array, dict]:
    """Flow-matching loss on the target frames only; t ~ table[randint(0, 1000)] per sample.

    foreground_weight > 0 (not in the recipe) weights each latent pixel's squared error by
    1 + foreground_weight * d^2 / mean(d^2), d being its distance from the median latent pixel
    of its frame (`foreground_weights`), and normalises by the weights' sum.
    Returns (scalar loss, {'t': f32[B], 'per_sample': f32[B]}).
    """
    k_t, k_eps = jax.random.split(key)
    b = target_latents.shape[0]
    t = schedule.sample_training_timesteps(k_t, (b,), shift)
    noise = jax.random.normal(k_eps, target_latents.shape, jnp.float32)
    x_t = schedule.add_noise(target_latents.astype(jnp.float32), noise, t, shift)
    v = teacher_velocity(dit, context_latents, x_t, t, text, text_kv=text_kv, frame_prompt=frame_prompt,
                         frame_pos=frame_pos, frame_shot=frame_shot, shot_theta=shot_theta)
    err = jnp.square(v.astype(jnp.float32) - schedule.velocity_target(target_latents.astype(jnp.float32), noise))
    if foreground_weight:
        w = foreground_weights(target_latents.astype(jnp.float32), foreground_weight)
        per_sample = jnp.sum(err * w, axis=(1, 2, 3, 4)) / (jnp.sum(w, axis=(1, 2, 3, 4)) * err.shape[-1])
    else:
        per_sample = jnp.mean(err, axis=tuple(range(1, err.ndim)))
    if weighted:
        per_sample = per_sample * jnp.asarray(schedule.training_weights(shift))[schedule.table_index(t, shift)]
    return jnp.mean(per_sample), {"t": t, "per_sample": per_sample}


def foreground_weights(latents: jax.Array, strength: float) -> jax.Array:
    """f32[B, T, h, w, 1] loss weights that favour what stands out from a frame's background.

    A small object (a Shapes character is 2x2 of 8x8 latent pixels in a wide shot) is a small
    share of a plain MSE, so a from-scratch teacher learns its background long before it.
    Weight 1 + strength * d^2 / mean(d^2), d: each latent pixel's distance from the per-channel
    median over its frame (the background where the background is most of the frame).
    """
    bg = jnp.median(latents, axis=(2, 3), keepdims=True)
    d2 = jnp.sum(jnp.square(latents - bg), axis=-1, keepdims=True)
    return 1.0 + strength * d2 / jnp.maximum(jnp.mean(d2, axis=(2, 3), keepdims=True), 1e-6)


def _routed(text_kv: TextKV, frame_prompt):
    """frame_prompt applies only to multi-prompt text K/V ([layers, B, P, L, H, Dh])."""
    return frame_prompt if text_kv.k.ndim == 6 else None


def sample(dit: WanDiT, context_latents: jax.Array, noise: jax.Array, text_kv: TextKV, null_text_kv: TextKV,
           layout, *, guidance: float = 6.0, num_steps: int = 50, shift: float = 8.0, shot_theta: float = 0.0,
           save_steps: tuple[int, ...] = (0, 13, 25, 37)) -> tuple[jax.Array, jax.Array]:
    """The teacher's many-step sampler with classifier-free guidance (`Teacher_Ode_Sample.py`).

    Euler over `schedule.teacher_timesteps(num_steps, shift)`; velocity =
    uncond + guidance (cond - uncond), where the unconditional pass uses the
    negative prompt for every frame (`null_text_kv`, one prompt) and the same
    context latents.
    Args:
      context_latents: f32[B, Nc, h, w, 16]; noise f32[B, T, h, w, 16].
      text_kv: multi-caption [layers, B, P, L, H, Dh] (routed by layout.frame_prompt) or one prompt.
      layout: `context.ShotLayout` over Nc + T frames.
    Returns:
      (x0 f32[B, T, h, w, 16], the sampler's inputs at `save_steps` [S, B, T, h, w, 16]) — the ODE pairs.
    """
    ts, ss = (jnp.asarray(a) for a in schedule.teacher_timesteps(num_steps, shift))
    b = noise.shape[0]
    pos, shot, prompt = (jnp.asarray(a) for a in layout)

    def velocity(x, t, tkv):
        return teacher_velocity(dit, context_latents, x, t, text_kv=tkv, frame_prompt=_routed(tkv, prompt),
                                frame_pos=pos, frame_shot=shot, shot_theta=shot_theta)

    def body(x, i):
        t = jnp.full((b,), ts[i])
        v_c, v_u = velocity(x, t, text_kv), velocity(x, t, null_text_kv)
        return schedule.euler_step(x, v_u + guidance * (v_c - v_u), ss[i], ss[i + 1]), x

    x0, inputs = jax.lax.scan(body, noise, jnp.arange(num_steps))
    return x0, inputs[jnp.asarray(save_steps, jnp.int32)]
