"""Dense optical flow by pyramidal Lucas-Kanade in JAX, and VBench's dynamic degree on top of it.

Flow (Lucas & Kanade 1981; coarse to fine as in Bouguet 2000): on a Gaussian
pyramid of grey frames, from the coarsest level, the current flow is doubled
onto the next finer level, the second frame is warped back by it (bilinear),
and `iters` Lucas-Kanade updates (each from the window-averaged flow) are
solved at every pixel from the structure tensor summed over a `window` x
`window` neighbourhood:

    [sum Ix^2   sum IxIy] [du]     [sum Ix It]
    [sum IxIy   sum Iy^2] [dv] = - [sum Iy It]

Pixels whose tensor is near singular (flat regions, the aperture problem) get
no update. Flow is in pixels of the given frames, (dx, dy) per frame step.

Dynamic degree (VBench, Huang et al. 2024, there with RAFT flow): frames are
taken at about 8 per second and resized to 256 px on the short side; a frame
step's motion is the mean of the largest 5 % of its flow magnitudes; a video is
dynamic when at least round(4 * n / 16) of its n frames' steps exceed
6 * short_side / 256 = 6 pixels. The dynamic degree of a set of videos is the
percentage of dynamic ones.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

COND = 1e-2  # min det / trace^2 = l1 l2 / (l1 + l2)^2: both eigenvalues well away from 0
_GAUSS = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _filter(x: jax.Array, taps: np.ndarray) -> jax.Array:
    """Separable filter of [H, W] with edge padding."""
    r = len(taps) // 2
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        xp = jnp.pad(x, pad, mode="edge")
        n = x.shape[axis]
        x = sum(w * jax.lax.slice_in_dim(xp, i, i + n, axis=axis) for i, w in enumerate(taps))
    return x


def _box(x: jax.Array, window: int) -> jax.Array:
    """Mean over window x window neighbourhoods of [..., H, W], edges repeated (one reduce_window)."""
    r = window // 2
    xp = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(r, r), (r, r)], mode="edge")
    ones = (1,) * (x.ndim - 2)
    return jax.lax.reduce_window(xp, 0.0, jax.lax.add, ones + (window, window), ones + (1, 1),
                                 "VALID") / window ** 2


def _down(x: jax.Array) -> jax.Array:
    return _filter(x, _GAUSS)[::2, ::2]


def _warp(x: jax.Array, flow: jax.Array) -> jax.Array:
    """x sampled at (y + v, x + u), bilinear, borders repeated."""
    h, w = x.shape
    yy = jnp.clip(jnp.arange(h, dtype=jnp.float32)[:, None] + flow[..., 1], 0, h - 1)
    xx = jnp.clip(jnp.arange(w, dtype=jnp.float32)[None, :] + flow[..., 0], 0, w - 1)
    y0 = jnp.minimum(jnp.floor(yy), h - 2).astype(jnp.int32)
    x0 = jnp.minimum(jnp.floor(xx), w - 2).astype(jnp.int32)
    fy, fx = yy - y0, xx - x0
    flat = x.reshape(-1)
    at = lambda yi, xi: flat[yi * w + xi]  # noqa: E731
    top = (1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1)
    bottom = (1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)
    return (1 - fy) * top + fy * bottom


def _lk_update(i0: jax.Array, i1: jax.Array, flow: jax.Array, window: int) -> jax.Array:
    # Lucas-Kanade assumes one flow per window: start from the window-averaged flow. Without
    # this, the part of the per-pixel error that varies within a window is never seen by
    # the window sums below and accumulates over iterations.
    flow = jnp.moveaxis(_box(jnp.moveaxis(flow, -1, 0), window), 0, -1)
    i1w = _warp(i1, flow)
    avg = 0.5 * (i0 + i1w)
    ix, iy = _diff(avg, 1), _diff(avg, 0)
    it = i1w - i0
    sxx, sxy, syy, sxt, syt = _box(jnp.stack([ix * ix, ix * iy, iy * iy, ix * it, iy * it]), window)
    det = sxx * syy - sxy * sxy
    ok = det > 1e-12 + COND * (sxx + syy) ** 2  # well-conditioned: both eigenvalues away from 0
    safe = jnp.where(ok, det, 1.0)
    du = jnp.where(ok, -(syy * sxt - sxy * syt) / safe, 0.0)
    dv = jnp.where(ok, -(sxx * syt - sxy * sxt) / safe, 0.0)
    # at most one pixel per update: beyond that the linearisation does not hold, and
    # capping it keeps ill-conditioned pixels from throwing their neighbours off
    return flow + jnp.clip(jnp.stack([du, dv], axis=-1), -1.0, 1.0)


def _diff(x: jax.Array, axis: int) -> jax.Array:
    """Central difference (x[i+1] - x[i-1]) / 2 along one axis, borders repeated."""
    pad = [(0, 0), (0, 0)]
    pad[axis] = (1, 1)
    xp = jnp.pad(x, pad, mode="edge")
    n = x.shape[axis]
    return 0.5 * (jax.lax.slice_in_dim(xp, 2, n + 2, axis=axis) - jax.lax.slice_in_dim(xp, 0, n, axis=axis))


@functools.partial(jax.jit, static_argnames=("levels", "iters", "window"))
def optical_flow(i0: jax.Array, i1: jax.Array, levels: int = 4, iters: int = 4, window: int = 9) -> jax.Array:
    """Flow f32[H, W, 2] (dx, dy) taking grey frame i0 [H, W] to i1: i1(y + dy, x + dx) ~ i0(y, x)."""
    p0, p1 = [i0], [i1]
    for _ in range(levels - 1):
        p0.append(_down(p0[-1]))
        p1.append(_down(p1[-1]))
    flow = jnp.zeros(p0[-1].shape + (2,), jnp.float32)
    for level in reversed(range(levels)):
        if flow.shape[:2] != p0[level].shape:
            h, w = p0[level].shape
            flow = 2.0 * jax.image.resize(flow, (h, w, 2), "linear")
        flow = jax.lax.fori_loop(0, iters, lambda _, f, l=level: _lk_update(p0[l], p1[l], f, window), flow)
    return flow


TARGET_FPS = 8
SHORT_SIDE = 256
TOP_FRACTION = 0.05
THRESHOLD = 6.0        # pixels at a 256-pixel short side
COUNT_PER_16 = 4       # dynamic: this many of every 16 frame steps above the threshold


def frame_stride(fps: float) -> int:
    """Take every k-th frame, k = round(fps / 8) (VBench's sampling)."""
    return max(1, int(round(fps / TARGET_FPS))) if fps > 0 else 1


@functools.partial(jax.jit, static_argnames=("size",))
def _grey(frames: jax.Array, size: tuple[int, int]) -> jax.Array:
    x = frames.astype(jnp.float32) @ jnp.array([0.299, 0.587, 0.114]) / 255.0
    return jax.image.resize(x, (x.shape[0], *size), "linear", antialias=True)


@jax.jit
def _top_motion(i0: jax.Array, i1: jax.Array) -> jax.Array:
    """[B] mean of the largest TOP_FRACTION flow magnitudes, for frame pairs [B, H, W]."""
    mag = jnp.linalg.norm(jax.vmap(optical_flow)(i0, i1), axis=-1).reshape(i0.shape[0], -1)
    k = max(1, int(TOP_FRACTION * mag.shape[1]))
    return jax.lax.top_k(mag, k)[0].mean(axis=-1)


def motion_scores(frames: np.ndarray, batch: int = 8) -> np.ndarray:
    """[T-1] per-step motion (mean of the top 5 % flow magnitudes, pixels at a 256-pixel
    short side) of uint8 frames [T, H, W, 3] already sampled at the rate wanted."""
    t, h, w, _ = frames.shape
    scale = min(1.0, SHORT_SIDE / min(h, w))
    size = (max(8, round(h * scale)), max(8, round(w * scale)))
    grey = _grey(jnp.asarray(frames), size)
    out = []
    for a in range(0, t - 1, batch):
        n = min(batch, t - 1 - a)
        idx = np.minimum(np.arange(a, a + batch), t - 2)  # pad the last batch: one compile
        out.append(np.asarray(_top_motion(grey[idx], grey[idx + 1]))[:n])
    # report motion at the 256-pixel scale whatever size the flow was computed at
    return np.concatenate(out) * (SHORT_SIDE / min(size)) if out else np.zeros(0)


def is_dynamic(scores: np.ndarray) -> bool:
    """VBench's rule: at least round(4 * n / 16) of the n sampled frames' steps move > 6 px."""
    n = len(scores) + 1
    return int((scores > THRESHOLD).sum()) >= max(1, round(COUNT_PER_16 * n / 16))
