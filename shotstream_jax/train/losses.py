"""The losses of the ShotStream recipe, on one example at a time (vmapped over the batch by the stages).

Follows the public code: `model/flow_matching.py` (teacher), `model/ode_regression.py`
(ODE init), `model/dmd_frameconcat.py` (DMD generator and critic losses).
Network calls go through the callables the stage passes in, so these
functions are the math only:

  velocity(x_ctx [Fc,h,w,C], x [T,h,w,C], t f32[] | f32[T], text [P,L,Dt], frame_shot i32[Fc+T]) -> v [T,h,w,C]
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from shotstream_jax import schedule


def dmd_generator_loss(x: jax.Array, key: jax.Array, real_x0: Callable, fake_x0: Callable, *,
                       min_t: float, max_t: float, shift: float) -> tuple[jax.Array, dict]:
    """Distribution matching loss of a generated sample x [T, h, w, C] (DESIGN.md section 8).

    t = table[randint] clamped to [min_t, max_t]; x_t = add_noise(sg(x), eps, t);
    g = (fake_x0(x_t, t) - real_x0(x_t, t)) / mean|sg(x) - real_x0|;
    L = 0.5 mean((x - sg(x - g))^2), whose gradient is g / x.size.
    """
    k_t, k_eps = jax.random.split(key)
    t = schedule.sample_training_timesteps(k_t, (), shift, clamp=(min_t, max_t))
    xs = jax.lax.stop_gradient(x.astype(jnp.float32))
    noisy = schedule.add_noise(xs, jax.random.normal(k_eps, xs.shape, jnp.float32), t, shift)
    real = jax.lax.stop_gradient(real_x0(noisy, t))
    fake = jax.lax.stop_gradient(fake_x0(noisy, t))
    grad = jnp.nan_to_num((fake - real) / jnp.mean(jnp.abs(xs - real)))
    target = jax.lax.stop_gradient(x.astype(jnp.float32) - grad)
    loss = 0.5 * jnp.mean(jnp.square(x.astype(jnp.float32) - target))
    return loss, {"dmd_grad_abs": jnp.mean(jnp.abs(grad)), "dmd_t": t}


def critic_loss(x: jax.Array, key: jax.Array, fake_velocity: Callable, *, min_t: float, max_t: float,
                shift: float) -> jax.Array:
    """Flow-matching loss of the fake score on a generated sample x [T, h, w, C] (no gradient to x)."""
    k_t, k_eps = jax.random.split(key)
    t = schedule.sample_training_timesteps(k_t, (), shift, clamp=(min_t, max_t))
    x = jax.lax.stop_gradient(x.astype(jnp.float32))
    noise = jax.random.normal(k_eps, x.shape, jnp.float32)
    v = fake_velocity(schedule.add_noise(x, noise, t, shift), t)
    return jnp.mean(jnp.square(v - schedule.velocity_target(x, noise)))


def ode_regression_loss(ode: jax.Array, clean: jax.Array, key: jax.Array, x0_fn: Callable, *,
                        chunk_frames: int, step_t: jax.Array) -> jax.Array:
    """Student regression on a teacher trajectory (`model/ode_regression.py`).

    ode [S, T, h, w, C] holds the teacher's latents at the student's S timesteps
    `step_t` f32[S]; the trajectory ends with `clean` at t=0 (the reference's
    step list [1000, 740, 500, 260, 1001] warps its last entry to t=0). One of the
    S + 1 states per chunk of `chunk_frames` frames is the student's input;
    x0_fn(x [T,...], t f32[T]) -> x0 [T,...] is regressed onto `clean` over the
    frames with t > 0 (t=0 chunks are only context for the later ones).
    """
    s, f = ode.shape[:2]
    traj = jnp.concatenate([ode, clean[None].astype(ode.dtype)])
    ts = jnp.concatenate([jnp.asarray(step_t, jnp.float32), jnp.zeros((1,), jnp.float32)])
    idx = jnp.repeat(jax.random.randint(key, (f // chunk_frames,), 0, s + 1), chunk_frames)
    t = ts[idx]
    pred = x0_fn(traj[idx, jnp.arange(f)], t)
    per_frame = jnp.mean(jnp.square(pred.astype(jnp.float32) - clean.astype(jnp.float32)), axis=(1, 2, 3))
    noisy = (t > 0).astype(jnp.float32)
    return jnp.sum(per_frame * noisy) / jnp.maximum(jnp.sum(noisy), 1.0)
