"""The Wan2.1 text-to-video diffusion transformer in Flax NNX.

Layout is channels-last: latents [B, F, H, W, C], tokens [B, N, D] with
N = F' * S (F' patched frames, S tokens per frame). The blocks are stacked
along a leading layer axis and run with `jax.lax.scan`, so 30 or 40 blocks
compile once.

Beyond the plain text-to-video forward, the same module serves ShotStream:
  * per-frame timesteps t [B, F] (the causal student denoises frames at
    different noise levels);
  * explicit RoPE frame positions and shot indices (the shot-discontinuity
    indicator adds k * shot_theta to every temporal angle of a frame in shot k);
  * per-frame text: `text` [B, P, L, Dt] with `frame_prompt` int32 [F] makes
    frame f cross-attend to prompt frame_prompt[f] (multi-caption teacher);
  * self-attention K/V buffers (the student's caches, `KVCache`): a pass
    writes its tokens' K/V into every layer's buffer in place and attends to
    the buffer's written prefix (`MaskSpec.kv_len`), so no pass copies the
    cache; and the current tokens' K/V as an optional output.

Nothing in this file knows about PyTorch key names; the converter does.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from shotstream_jax import sharding
from shotstream_jax.kernels import MaskSpec, attention

# name -> (dim, ffn_dim, num_heads, num_layers). Everything else is shared.
SIZES = {
    "1.3B": (1536, 8960, 12, 30),
    "14B": (5120, 13824, 40, 40),
    "tiny": (64, 128, 2, 2),
}


@dataclasses.dataclass(frozen=True)
class WanDiTConfig:
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    freq_dim: int = 256
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    text_len: int = 512
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    rope_theta: float = 10000.0
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of matmuls; norms/modulation stay float32
    remat: bool = False
    remat_policy: str = "nothing_saveable"  # a jax.checkpoint_policies name, e.g. dots_with_no_batch_dims_saveable
    scan_unroll: int = 1
    attention_impl: str = "auto"
    fp8: bool = False  # the blocks' linear layers as E4M3 matmuls with per-tensor scales (inference)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def from_size(cls, size: str, **overrides) -> "WanDiTConfig":
        if size not in SIZES:
            raise ValueError(f"unknown Wan size {size!r}; known: {sorted(SIZES)}")
        dim, ffn, heads, layers = SIZES[size]
        return cls(dim=dim, ffn_dim=ffn, num_heads=heads, num_layers=layers, **overrides)

    @classmethod
    def from_dict(cls, d) -> "WanDiTConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown WanDiT config keys {unknown}; known: {sorted(known)}")
        if "patch_size" in d:
            d["patch_size"] = tuple(d["patch_size"])
        return cls(**d)


class TextKV(NamedTuple):
    """Cross-attention keys/values of every layer: [layers, B, (P,) L, H, Dh]."""
    k: jax.Array
    v: jax.Array


class KVCache(NamedTuple):
    """Self-attention K/V buffers of every layer, [layers, B, L, H, Dh], and the token offset
    `start` (int32 [], may be traced) where a pass writes its own tokens' K/V."""
    k: jax.Array
    v: jax.Array
    start: jax.Array


class _LayerCache(NamedTuple):
    """`KVCache` seen from one block: the stacked buffers and the block's layer index."""
    k: jax.Array
    v: jax.Array
    start: jax.Array
    layer: jax.Array

    def write_and_read(self, k: jax.Array, v: jax.Array):
        """Write k, v [B, n, H, Dh] at (layer, start) in place; return (self, this layer's keys, values)."""
        at = (self.layer, 0, self.start, 0, 0)
        ck = jax.lax.dynamic_update_slice(self.k, k[None].astype(self.k.dtype), at)
        cv = jax.lax.dynamic_update_slice(self.v, v[None].astype(self.v.dtype), at)
        read = lambda c: jax.lax.dynamic_index_in_dim(c, self.layer, keepdims=False)
        return self._replace(k=ck, v=cv), read(ck).astype(k.dtype), read(cv).astype(v.dtype)


class RoPE(NamedTuple):
    """cos/sin of the rotation angle per token and frequency pair: [N, Dh/2]."""
    cos: jax.Array
    sin: jax.Array


# ---------------------------------------------------------------- small pieces


def sinusoidal_embedding(t: jax.Array, dim: int) -> jax.Array:
    """Wan's timestep embedding: [cos(t w), sin(t w)], w_i = 10000^(-i/half). t [...] -> [..., dim]."""
    half = dim // 2
    freqs = jnp.power(10000.0, -jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def rope_frequencies(head_dim: int, theta: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-axis frequencies: temporal d-4(d//6), height and width 2(d//6) dims each (pairs)."""
    def freqs(n):
        return 1.0 / theta ** (jnp.arange(0, n, 2, dtype=jnp.float32) / n)
    d6 = head_dim // 6
    return freqs(head_dim - 4 * d6), freqs(2 * d6), freqs(2 * d6)


def rope_angles(cfg: WanDiTConfig, frame_pos: jax.Array, frame_shot: jax.Array,
                height: int, width: int, shot_theta: float) -> RoPE:
    """3D RoPE for tokens of frames at temporal positions `frame_pos` [F] in shots `frame_shot` [F].

    Temporal angle of a frame at position t in shot k: t * w_j + k * shot_theta
    for every temporal pair j (ShotStream's discontinuity indicator; with
    shot_theta = 0 this is the plain Wan RoPE). Height/width angles are h * w_j
    and w * w_j. Returns cos/sin [F * height * width, head_dim / 2].
    """
    ft, fh, fw = rope_frequencies(cfg.head_dim, cfg.rope_theta)
    nf = frame_pos.shape[0]
    a_t = frame_pos.astype(jnp.float32)[:, None] * ft + frame_shot.astype(jnp.float32)[:, None] * shot_theta
    a_h = jnp.arange(height, dtype=jnp.float32)[:, None] * fh
    a_w = jnp.arange(width, dtype=jnp.float32)[:, None] * fw
    ang = jnp.concatenate([
        jnp.broadcast_to(a_t[:, None, None, :], (nf, height, width, ft.shape[0])),
        jnp.broadcast_to(a_h[None, :, None, :], (nf, height, width, fh.shape[0])),
        jnp.broadcast_to(a_w[None, None, :, :], (nf, height, width, fw.shape[0])),
    ], axis=-1).reshape(nf * height * width, -1)
    return RoPE(jnp.cos(ang), jnp.sin(ang))


def apply_rope(x: jax.Array, rope: RoPE) -> jax.Array:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of x [B, N, H, Dh] by the angles in `rope` ([N, Dh/2])."""
    xf = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = rope.cos[None, :, None, :], rope.sin[None, :, None, :]
    out = jnp.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


class RMSNorm(nnx.Module):
    """x / rms(x) * weight, computed in float32."""

    def __init__(self, dim: int, eps: float, *, param_dtype, axis_name: str = "embed"):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype), **_axes((axis_name,)))

    def __call__(self, x):
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (y * self.weight[...].astype(jnp.float32)).astype(x.dtype)


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """LayerNorm without affine parameters, in float32."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    return (xf - mean) * jax.lax.rsqrt(var + eps)


class AffineLayerNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, param_dtype):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype), **_axes(("embed",)))
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), **_axes(("embed",)))

    def __call__(self, x):
        return layer_norm(x, self.eps) * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)


def _axes(names: tuple) -> dict:
    """Logical axis names of a parameter; the mesh rules map them to devices at train time."""
    return {"out_sharding": names, "eager_sharding": False}


E4M3_MAX = 448.0  # largest finite float8_e4m3fn


def quantize_e4m3(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """a -> (float8_e4m3fn values, float32 per-tensor scale) with a ~= values * scale."""
    scale = jnp.maximum(jnp.max(jnp.abs(a)).astype(jnp.float32), 1e-12) / E4M3_MAX
    return (a.astype(jnp.float32) / scale).astype(jnp.float8_e4m3fn), scale


class Fp8Linear(nnx.Linear):
    """nnx.Linear (same parameters, so checkpoints load unchanged) computed as an FP8 E4M3 matmul:
    input and kernel each scaled per tensor into E4M3's range, products accumulated in float32."""

    def __call__(self, x):
        xq, sx = quantize_e4m3(x)
        wq, sw = quantize_e4m3(self.kernel[...])
        y = jax.lax.dot_general(xq, wq, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        return (y * (sx * sw) + self.bias[...].astype(jnp.float32)).astype(self.dtype)


def _linear(cfg: WanDiTConfig, din: int, dout: int, axes: tuple[str, str], rngs: nnx.Rngs,
            fp8: bool = False) -> nnx.Linear:
    """A Linear in the compute dtype; `fp8` (the blocks' layers, with cfg.fp8) makes it an `Fp8Linear`."""
    return (Fp8Linear if fp8 and cfg.fp8 else nnx.Linear)(
        din, dout, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
        kernel_init=nnx.with_metadata(nnx.initializers.lecun_normal(), **_axes(axes)),
        bias_init=nnx.with_metadata(nnx.initializers.zeros_init(), **_axes((axes[1],))),
        rngs=rngs)


class MLP(nnx.Module):
    """Linear - GELU(tanh) - Linear (Wan's FFN and text embedding)."""

    def __init__(self, cfg, din, dhidden, dout, rngs, axes=("embed", "mlp"), fp8=False):
        self.fc1 = _linear(cfg, din, dhidden, axes, rngs, fp8)
        self.fc2 = _linear(cfg, dhidden, dout, axes[::-1], rngs, fp8)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=True))


# ---------------------------------------------------------------- attention


class _Attention(nnx.Module):
    """q, k, v, o projections with RMS-normed q and k over the full width (Wan's qk_norm)."""

    def __init__(self, cfg: WanDiTConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.dim
        self.q = _linear(cfg, d, d, ("embed", "heads"), rngs, fp8=True)
        self.k = _linear(cfg, d, d, ("embed", "heads"), rngs, fp8=True)
        self.v = _linear(cfg, d, d, ("embed", "heads"), rngs, fp8=True)
        self.o = _linear(cfg, d, d, ("heads", "embed"), rngs, fp8=True)
        pd = jnp.dtype(cfg.param_dtype)
        self.norm_q = RMSNorm(d, cfg.eps, param_dtype=pd, axis_name="heads")
        self.norm_k = RMSNorm(d, cfg.eps, param_dtype=pd, axis_name="heads")


class SelfAttention(_Attention):
    def qkv(self, x: jax.Array, rope: RoPE):
        """x [B, N, D] -> roped q, k and v, each [B, N, H, Dh] in the compute dtype."""
        b, n, _ = x.shape
        heads = (b, n, self.cfg.num_heads, self.cfg.head_dim)
        q = apply_rope(self.norm_q(self.q(x)).reshape(heads), rope)
        k = apply_rope(self.norm_k(self.k(x)).reshape(heads), rope)
        return q, k, self.v(x).reshape(heads)

    def __call__(self, x, rope, cache: Optional[_LayerCache] = None, mask: Optional[MaskSpec] = None):
        """Returns (out [B, N, D], (k, v) of these tokens [B, N, H, Dh], the updated cache).

        With a cache the keys are the layer's whole buffer after writing these
        tokens into it; `mask.kv_len` bounds the part the attention reads.
        """
        q, k, v = self.qkv(x, rope)
        keys, values = k, v
        if cache is not None:
            cache, keys, values = cache.write_and_read(k, v)
        out = attention(q, keys, values, mask, impl=self.cfg.attention_impl)
        return self.o(out.reshape(x.shape[0], x.shape[1], -1)), (k, v), cache


class CrossAttention(_Attention):
    def text_kv(self, text: jax.Array) -> tuple[jax.Array, jax.Array]:
        """text tokens [..., L, D] -> k, v [..., L, H, Dh]; once per prompt, reused by every pass."""
        shape = (*text.shape[:-1], self.cfg.num_heads, self.cfg.head_dim)
        return self.norm_k(self.k(text)).reshape(shape), self.v(text).reshape(shape)

    def __call__(self, x, kv, frames: int, frame_prompt: Optional[jax.Array]):
        """x [B, N, D]; kv: k, v [B, L, H, Dh], or [B, P, L, H, Dh] with frame_prompt [F]."""
        b, n, _ = x.shape
        q = self.norm_q(self.q(x)).reshape(b, n, self.cfg.num_heads, self.cfg.head_dim)
        k, v = kv
        if frame_prompt is None:
            out = attention(q, k, v, impl=self.cfg.attention_impl)
        else:
            # Each frame's tokens see only their own shot's prompt: fold frames into the batch.
            s = n // frames
            q = q.reshape(b * frames, s, *q.shape[2:])
            k = k[:, frame_prompt].reshape(b * frames, *k.shape[2:])
            v = v[:, frame_prompt].reshape(b * frames, *v.shape[2:])
            out = attention(q, k, v, impl=self.cfg.attention_impl)
        return self.o(out.reshape(b, n, -1))


# ---------------------------------------------------------------- blocks


def _modulate(x, shift, scale):
    """x [B, F, S, D] float32; shift/scale [B, F, 1, D]."""
    return x * (1.0 + scale) + shift


class WanBlock(nnx.Module):
    """One DiT block: modulated self-attention, cross-attention, modulated FFN."""

    def __init__(self, cfg: WanDiTConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = jnp.dtype(cfg.param_dtype)
        self.self_attn = SelfAttention(cfg, rngs)
        self.cross_attn = CrossAttention(cfg, rngs)
        self.norm3 = AffineLayerNorm(cfg.dim, cfg.eps, param_dtype=pd) if cfg.cross_attn_norm else None
        self.ffn = MLP(cfg, cfg.dim, cfg.ffn_dim, cfg.dim, rngs, fp8=True)
        self.modulation = nnx.Param(
            jax.random.normal(rngs.params(), (6, cfg.dim), pd) / cfg.dim ** 0.5,
            **_axes((None, "embed")))

    def __call__(self, x, e0, rope, text_kv, frames, frame_prompt=None, cache=None, mask=None):
        """x [B, N, D] float32 residual stream; e0 [B, F, 6, D] float32. Returns (x, (k, v), cache)."""
        b, n, d = x.shape
        cdt = jnp.dtype(self.cfg.dtype)
        mod = self.modulation[...].astype(jnp.float32) + e0  # [B, F, 6, D]
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (
            mod[:, :, i:i + 1] for i in range(6))
        by_frame = (b, frames, n // frames, d)

        h = _modulate(layer_norm(x, self.cfg.eps).reshape(by_frame), shift_sa, scale_sa)
        y, kv, cache = self.self_attn(h.reshape(b, n, d).astype(cdt), rope, cache, mask)
        x = x + (y.astype(jnp.float32).reshape(by_frame) * gate_sa).reshape(b, n, d)

        h = self.norm3(x) if self.norm3 is not None else x
        x = x + self.cross_attn(h.astype(cdt), text_kv, frames, frame_prompt).astype(jnp.float32)

        h = _modulate(layer_norm(x, self.cfg.eps).reshape(by_frame), shift_ff, scale_ff)
        y = self.ffn(h.reshape(b, n, d).astype(cdt))
        x = x + (y.astype(jnp.float32).reshape(by_frame) * gate_ff).reshape(b, n, d)
        return x, kv, cache


class Head(nnx.Module):
    def __init__(self, cfg: WanDiTConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = jnp.dtype(cfg.param_dtype)
        self.head = _linear(cfg, cfg.dim, math.prod(cfg.patch_size) * cfg.out_channels, ("embed", None), rngs)
        self.modulation = nnx.Param(
            jax.random.normal(rngs.params(), (2, cfg.dim), pd) / cfg.dim ** 0.5,
            **_axes((None, "embed")))

    def __call__(self, x, e):
        """x [B, N, D] float32, e [B, F, D] float32 -> [B, N, prod(patch) * C_out] float32."""
        b, n, d = x.shape
        f = e.shape[1]
        mod = self.modulation[...].astype(jnp.float32) + e[:, :, None]  # [B, F, 2, D]
        h = _modulate(layer_norm(x, self.cfg.eps).reshape(b, f, n // f, d), mod[:, :, 0:1], mod[:, :, 1:2])
        return self.head(h.reshape(b, n, d).astype(jnp.dtype(self.cfg.dtype))).astype(jnp.float32)


# ---------------------------------------------------------------- the model


class WanDiT(nnx.Module):
    """Wan2.1 T2V transformer. `__call__(latents, t, text) -> velocity` (noise - x0)."""

    def __init__(self, cfg: WanDiTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pt, ph, pw = cfg.patch_size
        self.patch_embedding = _linear(cfg, pt * ph * pw * cfg.in_channels, cfg.dim, (None, "embed"), rngs)
        self.text_embedding = MLP(cfg, cfg.text_dim, cfg.dim, cfg.dim, rngs, axes=(None, "embed"))
        self.time_embedding = nnx.Sequential(
            _linear(cfg, cfg.freq_dim, cfg.dim, (None, "embed"), rngs), jax.nn.silu,
            _linear(cfg, cfg.dim, cfg.dim, ("embed", None), rngs))
        self.time_projection = _linear(cfg, cfg.dim, 6 * cfg.dim, ("embed", None), rngs)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(r):
            return WanBlock(cfg, r)

        self.blocks = make_blocks(rngs)
        self.head = Head(cfg, rngs)

    # -- pieces that callers (the ShotStream student) use separately

    def patchify(self, latents: jax.Array) -> jax.Array:
        """[B, F, H, W, C] -> tokens [B, F' * H' * W', pt*ph*pw*C]."""
        b, f, h, w, c = latents.shape
        pt, ph, pw = self.cfg.patch_size
        if f % pt or h % ph or w % pw:
            raise ValueError(f"latent shape {latents.shape} is not divisible by the patch size {self.cfg.patch_size}")
        x = latents.reshape(b, f // pt, pt, h // ph, ph, w // pw, pw, c)
        x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
        return x.reshape(b, (f // pt) * (h // ph) * (w // pw), pt * ph * pw * c)

    def unpatchify(self, tokens: jax.Array, grid: tuple[int, int, int]) -> jax.Array:
        """[B, N, pt*ph*pw*C] -> [B, F, H, W, C] (patch element order (pt, ph, pw, C), as Wan)."""
        b = tokens.shape[0]
        f, h, w = grid
        pt, ph, pw = self.cfg.patch_size
        x = tokens.reshape(b, f, h, w, pt, ph, pw, -1).transpose(0, 1, 4, 2, 5, 3, 6, 7)
        return x.reshape(b, f * pt, h * ph, w * pw, -1)

    def time_embed(self, t: jax.Array, frames: int) -> tuple[jax.Array, jax.Array]:
        """t [B] or [B, F] -> e [B, F, D], e0 [B, F, 6, D], float32."""
        t = jnp.asarray(t, jnp.float32)
        if t.ndim == 1:
            t = jnp.broadcast_to(t[:, None], (t.shape[0], frames))
        if t.shape[1] != frames:
            raise ValueError(f"per-frame timesteps have {t.shape[1]} frames, latents have {frames}")
        e = self.time_embedding(sinusoidal_embedding(t, self.cfg.freq_dim)).astype(jnp.float32)
        e0 = self.time_projection(jax.nn.silu(e)).astype(jnp.float32)
        return e, e0.reshape(*e0.shape[:-1], 6, self.cfg.dim)

    def encode_text(self, text: jax.Array) -> TextKV:
        """Text encoder states [B, (P,) L, text_dim] -> per-layer cross-attention K/V.

        Computed once per prompt and reused by every denoising and cache pass.
        """
        ctx = self.text_embedding(text.astype(jnp.dtype(self.cfg.dtype)))
        graphdef, state = nnx.split(self.blocks)

        def one(layer_state):
            return nnx.merge(graphdef, layer_state).cross_attn.text_kv(ctx)

        k, v = jax.lax.map(one, state)
        return TextKV(k, v)

    def __call__(
        self,
        latents: jax.Array,
        t: jax.Array,
        text: Optional[jax.Array] = None,
        *,
        text_kv: Optional[TextKV] = None,
        frame_prompt: Optional[jax.Array] = None,
        frame_pos: Optional[jax.Array] = None,
        frame_shot: Optional[jax.Array] = None,
        shot_theta: float = 0.0,
        kv_cache: Optional[KVCache] = None,
        mask: Optional[MaskSpec] = None,
        return_kv: bool = False,
        return_intermediates: bool = False,
    ):
        """Velocity for `latents`.

        Args:
          latents: f32[B, F, H, W, C_in].
          t: f32[B] or f32[B, F], in [0, 1000].
          text: f32[B, L, text_dim], or [B, P, L, text_dim] with `frame_prompt`
            int32[F] naming each frame's prompt. Or pass `text_kv` instead.
          frame_pos, frame_shot: int/float [F] RoPE temporal position and shot
            index per latent frame (default 0..F-1 and 0).
          shot_theta: phase added per shot index to temporal angles.
          kv_cache: self-attention buffers (the student's caches): these
            tokens' roped K/V are written at `kv_cache.start` of every layer's
            buffer and the tokens attend to the buffer; `mask.kv_len` (= start
            + N, or more) says how much of it is written.
          mask: MaskSpec over the keys (the buffer with a cache, else these tokens).
          return_kv: also return these tokens' (k, v) [layers, B, N, H, Dh].
          return_intermediates: also return {'blocks': [layers, B, N, D]}.
        Returns:
          velocity f32[B, F, H, W, C_out], then the updated `KVCache` if one was
          given, then the requested extras in order.
        """
        cfg = self.cfg
        b, f, hh, ww, _ = latents.shape
        pt, ph, pw = cfg.patch_size
        grid = (f // pt, hh // ph, ww // pw)
        if text_kv is None:
            if text is None:
                raise ValueError("pass `text` (encoder states) or precomputed `text_kv`")
            text_kv = self.encode_text(text)
        if frame_pos is None:
            frame_pos = jnp.arange(grid[0])
        if frame_shot is None:
            frame_shot = jnp.zeros((grid[0],), jnp.int32)
        rope = rope_angles(cfg, frame_pos, frame_shot, grid[1], grid[2], shot_theta)
        e, e0 = self.time_embed(t, grid[0])

        x = self.patch_embedding(self.patchify(latents).astype(jnp.dtype(cfg.dtype))).astype(jnp.float32)
        graphdef, block_state = nnx.split(self.blocks)

        def body(carry, xs):
            x, cache = carry
            layer_state, tkv, layer = xs
            block = nnx.merge(graphdef, layer_state)
            lc = None if cache is None else _LayerCache(cache.k, cache.v, cache.start, layer)
            x, kv, lc = block(x, e0, rope, tkv, grid[0], frame_prompt, lc, mask)
            x = sharding.constrain_tokens(x)
            cache = None if lc is None else cache._replace(k=lc.k, v=lc.v)
            ys = (kv if return_kv else None, x if return_intermediates else None)
            return (x, cache), ys

        def body_sliced(x, xs, body=body):
            # Under remat a checkpointed body keeps its inputs for the backward pass: a cache in the
            # carry would be kept once per layer, so here each layer's slice goes in and out as xs/ys.
            layer_state, tkv, k, v = xs
            (x, lc), ys = body((x, KVCache(k[None], v[None], kv_cache.start)), (layer_state, tkv, 0))
            return x, (lc.k[0], lc.v[0], ys)

        if cfg.remat:
            policy = getattr(jax.checkpoint_policies, cfg.remat_policy)
            body, body_sliced = jax.checkpoint(body, policy=policy), jax.checkpoint(body_sliced, policy=policy)
        layers = (block_state, tuple(text_kv))
        if cfg.remat and kv_cache is not None:
            x, (k, v, (kv, inter)) = jax.lax.scan(body_sliced, x, (*layers, kv_cache.k, kv_cache.v),
                                                  unroll=cfg.scan_unroll)
            kv_cache = kv_cache._replace(k=k, v=v)
        else:
            # The cache rides in the carry so that every layer's write is in place (inference).
            (x, kv_cache), (kv, inter) = jax.lax.scan(
                body, (x, kv_cache), (*layers, jnp.arange(cfg.num_layers)), unroll=cfg.scan_unroll)

        out = self.unpatchify(self.head(x, e), grid)
        extras = [] if kv_cache is None else [kv_cache]
        if return_kv:
            extras.append(kv)
        if return_intermediates:
            extras.append({"blocks": inter})
        return (out, *extras) if extras else out


def num_params(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def abstract_model(cfg: WanDiTConfig) -> Any:
    """The model's structure with ShapeDtypeStructs instead of arrays (no memory)."""
    return nnx.eval_shape(lambda: WanDiT(cfg, rngs=nnx.Rngs(0)))
