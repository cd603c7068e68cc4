"""The one flow-matching schedule shared by the teacher, the student and training.

Forward process: x_t = (1 - s) x0 + s eps with s = sigma(t), velocity target
eps - x0, so x0 = x_t - s v. As in the public ShotStream / Self-Forcing code
(`utils/scheduler.py: FlowMatchScheduler(shift=8, sigma_min=0, extra_one_step=True)`
with `set_timesteps(1000, training=True)`), the training table holds 1000
shifted sigmas s'_i = shift s_i / (1 + (shift - 1) s_i) of s_i = 1 - i/1000,
timesteps t_i = 1000 s'_i, and every timestep is mapped to the sigma of the
NEAREST table entry (never t/1000 directly).

The student's 4 steps are the warped `denoising_step_list` [1000, 740, 500,
260]: t = table[1000 - step] (`model/base.py`, warp_denoising_step=True),
about [1000, 957.9, 888.9, 737.6]. Between steps the predicted x0 is
re-noised with FRESH noise to the next step's timestep
(`pipeline/causal_inference_ar.py`).

The teacher samples with Euler over 50 shifted steps (`Teacher_Ode_Sample.py`:
`FlowMatchScheduler(shift=8, sigma_min=0, extra_one_step=True)`,
`set_timesteps(50)`, `step()` = x + v (s_next - s), the last step to s = 0).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(s, shift: float):
    """s' = shift s / (1 + (shift - 1) s)."""
    return shift * s / (1 + (shift - 1) * s)


def linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """float32 linspace computed from both ends, as torch.linspace does."""
    step = np.float32((end - start) / (steps - 1))
    i = np.arange(steps)
    half = steps // 2
    lo = np.float32(start) + i[:half].astype(np.float32) * step
    hi = np.float32(end) - (steps - 1 - i[half:]).astype(np.float32) * step
    return np.concatenate([lo, hi]).astype(np.float32)


def sigmas(num_steps: int = NUM_TRAIN_TIMESTEPS, shift: float = 8.0) -> np.ndarray:
    """Shifted sigmas of `num_steps` steps from 1 down to (not including) 0: float32 [num_steps]."""
    s = linspace_f32(1.0, 0.0, num_steps + 1)[:-1]
    return shift_sigma(s, np.float32(shift)).astype(np.float32)


def timesteps(num_steps: int = NUM_TRAIN_TIMESTEPS, shift: float = 8.0) -> np.ndarray:
    """t = 1000 sigma for the steps of `sigmas`: float32 [num_steps], descending from 1000."""
    return (sigmas(num_steps, shift) * np.float32(NUM_TRAIN_TIMESTEPS)).astype(np.float32)


def training_weights(shift: float = 8.0) -> np.ndarray:
    """Per-table-entry loss weight of the teacher's flow-matching loss, float32 [1000].

    y = exp(-2 ((t - 500) / 1000)^2), shifted to min 0 and scaled to sum to 1000
    (`FlowMatchScheduler.set_timesteps(training=True)`).
    """
    n = NUM_TRAIN_TIMESTEPS
    t = timesteps(n, shift).astype(np.float64)
    y = np.exp(-2 * ((t - n / 2) / n) ** 2)
    y = y - y.min()
    return (y * (n / y.sum())).astype(np.float32)


def student_timesteps(denoising_steps: Sequence[int] = (1000, 740, 500, 260),
                      shift: float = 8.0) -> np.ndarray:
    """The student's warped timesteps: table[1000 - step] (0 maps past the table to t=0). float32 [n]."""
    table = np.concatenate([timesteps(NUM_TRAIN_TIMESTEPS, shift), np.zeros(1, np.float32)])
    return table[NUM_TRAIN_TIMESTEPS - np.asarray(denoising_steps, np.int64)]


def table_index(t: jax.Array, shift: float = 8.0) -> jax.Array:
    """Index of the nearest training-table timestep, int32 of t's shape."""
    table = jnp.asarray(timesteps(NUM_TRAIN_TIMESTEPS, shift))
    t = jnp.asarray(t, jnp.float32)
    return jnp.argmin(jnp.abs(table - t[..., None]), axis=-1).astype(jnp.int32)


def sigma_of(t: jax.Array, shift: float = 8.0) -> jax.Array:
    """Sigma of the nearest training-table entry, float32 of t's shape."""
    return jnp.asarray(sigmas(NUM_TRAIN_TIMESTEPS, shift))[table_index(t, shift)]


def _per_sample(s: jax.Array, x: jax.Array) -> jax.Array:
    """Broadcast sigma [], [B] or [B, F] against x [B, F, H, W, C]."""
    s = jnp.asarray(s, jnp.float32)
    return s.reshape(s.shape + (1,) * (x.ndim - s.ndim)) if s.ndim else s


def add_noise_sigma(x0: jax.Array, noise: jax.Array, sigma: jax.Array) -> jax.Array:
    """(1 - s) x0 + s eps for a given sigma ([], [B] or [B, F])."""
    s = _per_sample(sigma, x0)
    return ((1 - s) * x0 + s * noise).astype(x0.dtype)


def add_noise(x0: jax.Array, noise: jax.Array, t: jax.Array, shift: float = 8.0) -> jax.Array:
    """x_t for timesteps t ([], [B] or [B, F]) via the table's sigma. x0, noise [B, F, H, W, C]."""
    return add_noise_sigma(x0, noise, sigma_of(t, shift))


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
    """The flow-matching regression target eps - x0."""
    return noise - x0


def x0_from_velocity(x_t: jax.Array, v: jax.Array, t: jax.Array, shift: float = 8.0) -> jax.Array:
    """x0 = x_t - s v (s: sigma of t, [], [B] or [B, F])."""
    return (x_t - _per_sample(sigma_of(t, shift), x_t) * v).astype(x_t.dtype)


def sample_training_timesteps(key: jax.Array, shape: tuple = (), shift: float = 8.0,
                              clamp: Optional[tuple[float, float]] = None) -> jax.Array:
    """t = table[randint(0, 1000)] per element of `shape`; `clamp=(20, 980)` clips t as DMD does."""
    table = jnp.asarray(timesteps(NUM_TRAIN_TIMESTEPS, shift))
    t = table[jax.random.randint(key, shape, 0, NUM_TRAIN_TIMESTEPS)]
    return t if clamp is None else jnp.clip(t, clamp[0], clamp[1])


def teacher_timesteps(num_steps: int = 50, shift: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """(t [num_steps], sigmas [num_steps + 1] ending in 0) of the teacher's Euler sampler."""
    s = sigmas(num_steps, shift)
    return s * np.float32(NUM_TRAIN_TIMESTEPS), np.concatenate([s, np.zeros(1, np.float32)])


def euler_step(x: jax.Array, v: jax.Array, sigma: jax.Array, sigma_next: jax.Array) -> jax.Array:
    """One flow-matching Euler step x + v (s_next - s)."""
    return (x + v * (sigma_next - sigma)).astype(x.dtype)


def euler_sample(velocity_fn: Callable[[jax.Array, jax.Array], jax.Array], noise: jax.Array,
                 num_steps: int = 50, shift: float = 8.0) -> jax.Array:
    """Integrate dx/ds = v from s=1 to 0: velocity_fn(x [B, F, H, W, C], t f32[B]) -> v.

    `velocity_fn` carries the guidance (the teacher's CFG) and the context.
    """
    ts, ss = teacher_timesteps(num_steps, shift)
    b = noise.shape[0]

    def body(i, x):
        v = velocity_fn(x, jnp.full((b,), jnp.asarray(ts)[i]))
        return euler_step(x, v, jnp.asarray(ss)[i], jnp.asarray(ss)[i + 1])

    return jax.lax.fori_loop(0, num_steps, body, noise)
