"""The Wan2.1 causal 3D-convolution VAE in Flax NNX, with a streaming decoder.

Layout is channels-last: video [B, T, H, W, 3] in [-1, 1], latents
[B, T', H/8, W/8, z_dim] with T = 1 + 4 (T' - 1).

Time is causal everywhere: every temporal convolution sees only the current
and earlier frames, and everything else (RMS norms, spatial convolutions, the
mid-block attention) acts frame by frame. So the original's chunking (encode
the first frame alone, then groups of 4; decode one latent frame at a time,
each conv reading the last 2 inputs of the previous call from `feat_cache`)
is reproduced exactly by carrying, for each temporal conv, the last frames of
its input as an explicit cache pytree. A chunk of n frames processed at once
with that cache equals n one-frame calls, so the decoder can stream any chunk
size.

The first chunk is special in two places, as in the original:
  * `upsample3d` (decoder): the first latent frame is not doubled in time
    (1 latent frame -> 1 pixel frame) and does not enter the time conv's cache;
  * `downsample3d` (encoder): the first frame skips the strided time conv.
That is why the first chunk is a separate (static) code path: one compile for
the first chunk and one for every later chunk of the same shape.

Nothing here knows about PyTorch key names; `shotstream_jax.convert.vae` does.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from shotstream_jax.kernels import attention

# Per-channel statistics of Wan2.1 latents (original `WanVAE.__init__`, and
# diffusers' AutoencoderKLWan config `latents_mean` / `latents_std`).
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


class Dtypes(NamedTuple):
    """What the layers compute in and what they store their weights in."""
    compute: jnp.dtype
    param: jnp.dtype


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD
    # Convolution inputs and outputs, activations and conv caches (bfloat16 on accelerators: the convs
    # accumulate in float32 inside, the temporal taps are summed in float32); norms compute in float32.
    dtype: str = "float32"
    # The conv and linear weights (bfloat16 for generation on accelerators); conv biases and norm
    # scales, which enter float32 arithmetic, stay float32.
    param_dtype: str = "float32"

    def __post_init__(self):
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temporal_downsample needs one entry per downsampling stage "
                f"({len(self.dim_mult) - 1} for dim_mult {self.dim_mult}), got {self.temporal_downsample}")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"latents_mean/latents_std need z_dim={self.z_dim} entries")

    @property
    def dtypes(self) -> "Dtypes":
        return Dtypes(jnp.dtype(self.dtype), jnp.dtype(self.param_dtype))

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    def normalize(self, z: jax.Array) -> jax.Array:
        """Raw posterior mean -> the normalised latents the DiT works on. z [..., z_dim]."""
        return (z - jnp.asarray(self.latents_mean, z.dtype)) / jnp.asarray(self.latents_std, z.dtype)

    def denormalize(self, z: jax.Array) -> jax.Array:
        """Inverse of `normalize`: DiT latents -> what `decode` takes."""
        return z * jnp.asarray(self.latents_std, z.dtype) + jnp.asarray(self.latents_mean, z.dtype)


# ----------------------------------------------------------------------------
# Layers


class CausalConv3d(nnx.Module):
    """Conv3d, 'same' in space and causal in time: [B, T, H, W, Cin] -> [B, T/stride_t, H, W, Cout].

    The layer reads a cache of the last `cache_frames` input frames of the
    previous chunk (zeros before the first chunk: the original's causal zero
    padding) and returns the updated cache. Usually cache_frames = kt - 1; the
    encoder's stride-2 time conv keeps 1.
    """

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], dtypes: Dtypes, stride_t: int = 1,
                 cache_frames: Optional[int] = None, *, rngs: nnx.Rngs):
        kt, kh, kw = kernel
        fan_in = cin * kt * kh * kw
        self.kernel = nnx.Param(
            (jax.random.normal(rngs.params(), (kt, kh, kw, cin, cout)) * fan_in ** -0.5).astype(dtypes.param))
        self.bias = nnx.Param(jnp.zeros((cout,)))
        self.dtype = dtypes.compute
        self.stride_t = stride_t
        self.cache_frames = kt - 1 if cache_frames is None else cache_frames

    def init_cache(self, b: int, h: int, w: int) -> Optional[jax.Array]:
        """[B, cache_frames, H, W, Cin] zeros in the compute dtype, or None for a 1-frame kernel."""
        if not self.cache_frames:
            return None
        return jnp.zeros((b, self.cache_frames, h, w, self.kernel.shape[3]), self.dtype)

    def __call__(self, x, cache=None):
        """Output frame t reads frames s t + i (tap i) of [cache, x]. Each tap convolves the frames
        it reads from the cache and from x separately and the partial outputs are summed, padded to
        their output frames: by linearity the same result as convolving the concatenation, without
        copying the cache and the input into one buffer in every layer."""
        x = x.astype(self.dtype)
        kernel = self.kernel[...].astype(self.dtype)
        kt, kh, kw = kernel.shape[:3]
        c, s = self.cache_frames, self.stride_t
        t_out = (c + x.shape[1] - kt) // s + 1
        # A sum over temporal taps of per-frame 2D convs: XLA:CPU runs these
        # about 2x faster than one 3D conv, and accelerators fuse them well.
        conv = functools.partial(_conv2d, padding=((kh // 2, kh // 2), (kw // 2, kw // 2)), stride=1,
                                 dtype=self.dtype)
        y = 0.0
        for i in range(kt):
            n_cache = min(t_out, max(0, -(-(c - i) // s)))  # outputs whose tap i reads a cache frame
            if n_cache:
                frames = cache[:, i:i + s * (n_cache - 1) + 1:s].astype(self.dtype)
                y = y + _pad_time(conv(frames, kernel[i]), 0, t_out - n_cache)
            if t_out > n_cache:
                start = s * n_cache + i - c
                frames = x[:, start:start + s * (t_out - n_cache - 1) + 1:s]
                y = y + _pad_time(conv(frames, kernel[i]), n_cache, 0)
        if c:
            # Only a chunk shorter than the cache (the whole-clip decode's one-latent-frame steps,
            # the encoder's first frame) keeps some cached frames.
            keep = cache[:, x.shape[1]:].astype(self.dtype)
            cache = x[:, -c:] if x.shape[1] >= c else jnp.concatenate([keep, x], axis=1)
        return (y + self.bias[...]).astype(self.dtype), cache


def _pad_time(y, before, after):
    """f32 partial output y [B, T, ...] placed at frames [before, before + T) of the layer's output."""
    return jnp.pad(y.astype(jnp.float32), ((0, 0), (before, after)) + ((0, 0),) * (y.ndim - 2))


def _conv2d(x, kernel, stride, padding, dtype):
    """Per-frame 2D conv: x [B, T, H, W, Cin], kernel [kh, kw, Cin, Cout] -> [B, T, H', W', Cout] in `dtype`.

    The output stays in the input dtype: asking XLA for bf16 inputs and a float32
    output makes its GPU compiler run the conv in float32.
    """
    b, t = x.shape[:2]
    y = jax.lax.conv_general_dilated(
        x.reshape(b * t, *x.shape[2:]).astype(dtype), kernel.astype(dtype), window_strides=(stride, stride),
        padding=padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(b, t, *y.shape[1:])


class Conv2d(nnx.Module):
    """Per-frame 2D conv: [B, T, H, W, Cin] -> [B, T, H', W', Cout]; `padding` as in lax."""

    def __init__(self, cin: int, cout: int, dtypes: Dtypes, stride: int = 1, padding=((1, 1), (1, 1)), *,
                 rngs: nnx.Rngs):
        self.kernel = nnx.Param(
            (jax.random.normal(rngs.params(), (3, 3, cin, cout)) * (9 * cin) ** -0.5).astype(dtypes.param))
        self.bias = nnx.Param(jnp.zeros((cout,)))
        self.stride, self.padding, self.dtype = stride, padding, dtypes.compute

    def __call__(self, x):
        return (_conv2d(x, self.kernel[...], self.stride, self.padding, self.dtype) + self.bias[...]).astype(self.dtype)


class RMSNorm(nnx.Module):
    """x / ||x|| * sqrt(C) * gamma over channels (the original's F.normalize form)."""

    def __init__(self, dim: int):
        self.gamma = nnx.Param(jnp.ones((dim,)))

    def __call__(self, x):
        dtype, x = x.dtype, x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
        return (x / jnp.maximum(norm, 1e-12) * (x.shape[-1] ** 0.5) * self.gamma[...]).astype(dtype)


class ResidualBlock(nnx.Module):
    """RMSNorm-SiLU-CausalConv-RMSNorm-SiLU-CausalConv + (1x1x1 conv) shortcut."""

    def __init__(self, cin: int, cout: int, dtypes: Dtypes, *, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(cin)
        self.conv1 = CausalConv3d(cin, cout, (3, 3, 3), dtypes, rngs=rngs)
        self.norm2 = RMSNorm(cout)
        self.conv2 = CausalConv3d(cout, cout, (3, 3, 3), dtypes, rngs=rngs)
        self.shortcut = CausalConv3d(cin, cout, (1, 1, 1), dtypes, rngs=rngs) if cin != cout else None

    def init_cache(self, b, h, w):
        return (self.conv1.init_cache(b, h, w), self.conv2.init_cache(b, h, w))

    def __call__(self, x, cache, first):
        del first  # no first-chunk special case here
        h = x if self.shortcut is None else self.shortcut(x)[0]
        x, c1 = self.conv1(jax.nn.silu(self.norm1(x)), cache[0])
        x, c2 = self.conv2(jax.nn.silu(self.norm2(x)), cache[1])
        return x + h, (c1, c2)


class AttentionBlock(nnx.Module):
    """Single-head self-attention over the pixels of each frame, residual."""

    def __init__(self, dim: int, dtypes: Dtypes, *, rngs: nnx.Rngs):
        self.norm = RMSNorm(dim)
        linear = functools.partial(nnx.Linear, dtype=dtypes.compute, param_dtype=dtypes.param, rngs=rngs)
        self.to_qkv = linear(dim, 3 * dim)
        self.proj = linear(dim, dim)

    def __call__(self, x):
        b, t, h, w, c = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b * t, h * w, 1, 3 * c)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        o = attention(q, k, v).reshape(b, t, h, w, c)
        return x + self.proj(o).astype(x.dtype)


class Resample(nnx.Module):
    """2x spatial down/up-sampling, optionally with a causal 2x temporal change.

    modes: downsample2d, downsample3d (encoder), upsample2d, upsample3d (decoder).
    Upsampling halves the channels (the original's `dim // 2`).
    """

    def __init__(self, dim: int, mode: str, dtypes: Dtypes, *, rngs: nnx.Rngs):
        self.mode = mode
        if mode.startswith("up"):
            self.conv = Conv2d(dim, dim // 2, dtypes, rngs=rngs)
        else:
            # ZeroPad2d((0, 1, 0, 1)) then a stride-2 valid conv.
            self.conv = Conv2d(dim, dim, dtypes, stride=2, padding=((0, 1), (0, 1)), rngs=rngs)
        time_conv = None
        if mode == "upsample3d":
            # 2*dim outputs: the two new frames per input frame, side by side in channels.
            time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), dtypes, rngs=rngs)
        elif mode == "downsample3d":
            # Stride 2 over [last frame of the previous chunk, this chunk].
            time_conv = CausalConv3d(dim, dim, (3, 1, 1), dtypes, stride_t=2, cache_frames=1, rngs=rngs)
        self.time_conv = time_conv

    def init_cache(self, b, h, w):
        if self.mode == "upsample3d":
            return self.time_conv.init_cache(b, h, w)
        if self.mode == "downsample3d":
            return self.time_conv.init_cache(b, (h + 1) // 2, (w + 1) // 2)
        return None

    def _upsample_time(self, x, cache):
        """[B, T, H, W, C] -> [B, 2T, H, W, C]: each frame becomes two."""
        y, cache = self.time_conv(x, cache)
        b, t, h, w, c2 = y.shape
        y = y.reshape(b, t, h, w, 2, c2 // 2)
        return jnp.moveaxis(y, 4, 2).reshape(b, 2 * t, h, w, c2 // 2), cache

    def __call__(self, x, cache, first):
        if self.mode == "upsample3d":
            if first:
                # The very first frame is not doubled and never enters the cache.
                head, rest = x[:, :1], x[:, 1:]
                if rest.shape[1]:
                    rest, cache = self._upsample_time(rest, cache)
                x = jnp.concatenate([head, rest], axis=1)
            else:
                x, cache = self._upsample_time(x, cache)
        if self.mode.startswith("up"):
            x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)  # nearest-exact, integer scale
        x = self.conv(x)
        if self.mode == "downsample3d":
            if first:
                # The first chunk (one frame) skips the time conv but seeds its cache.
                cache = x[:, -1:]
            else:
                x, cache = self.time_conv(x, cache)
        return x, cache


class MidBlock(nnx.Module):
    """ResidualBlock - AttentionBlock - ResidualBlock at the lowest resolution."""

    def __init__(self, dim: int, dtypes: Dtypes, *, rngs: nnx.Rngs):
        self.res0 = ResidualBlock(dim, dim, dtypes, rngs=rngs)
        self.attn = AttentionBlock(dim, dtypes, rngs=rngs)
        self.res1 = ResidualBlock(dim, dim, dtypes, rngs=rngs)

    def init_cache(self, b, h, w):
        return (self.res0.init_cache(b, h, w), self.res1.init_cache(b, h, w))

    def __call__(self, x, cache, first):
        x, c0 = self.res0(x, cache[0], first)
        x, c1 = self.res1(self.attn(x), cache[1], first)
        return x, (c0, c1)


class _Coder(nnx.Module):
    """What encoder and decoder share: conv_in, a flat list of residual and
    resample blocks (`blocks`, the original's `downsamples` / `upsamples`), a
    mid block, and an RMSNorm-SiLU-CausalConv head. The encoder puts the mid
    block after the blocks, the decoder before."""

    mid_first: bool

    def _build_head(self, cin, cout, dtypes, rngs):
        self.norm_out = RMSNorm(cin)
        self.conv_out = CausalConv3d(cin, cout, (3, 3, 3), dtypes, rngs=rngs)

    def init_cache(self, b: int, h: int, w: int):
        """Zero cache pytree for inputs of spatial size h x w (fixed shapes)."""
        caches = [self.conv_in.init_cache(b, h, w)]
        mid_cache = None
        if self.mid_first:
            mid_cache = self.mid.init_cache(b, h, w)
        for blk in self.blocks:
            caches.append(blk.init_cache(b, h, w))
            if isinstance(blk, Resample):
                h, w = (2 * h, 2 * w) if blk.mode.startswith("up") else ((h + 1) // 2, (w + 1) // 2)
        if not self.mid_first:
            mid_cache = self.mid.init_cache(b, h, w)
        return {"conv_in": caches[0], "blocks": tuple(caches[1:]), "mid": mid_cache,
                "conv_out": self.conv_out.init_cache(b, h, w)}

    def __call__(self, x, cache, first: bool):
        """x [B, T, H, W, Cin] and its cache -> (y [B, T', H', W', Cout], new cache)."""
        x, c_in = self.conv_in(x, cache["conv_in"])
        if self.mid_first:
            x, c_mid = self.mid(x, cache["mid"], first)
        c_blocks = []
        for blk, c in zip(self.blocks, cache["blocks"]):
            x, c = blk(x, c, first)
            c_blocks.append(c)
        if not self.mid_first:
            x, c_mid = self.mid(x, cache["mid"], first)
        x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), cache["conv_out"])
        return x, {"conv_in": c_in, "blocks": tuple(c_blocks), "mid": c_mid, "conv_out": c_out}


class Encoder3d(_Coder):
    """[B, T, H, W, 3] -> [B, T/4 (causal), H/8, W/8, 2 z_dim] (mean and log-variance)."""

    mid_first = False

    def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
        dtypes = cfg.dtypes
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv_in = CausalConv3d(3, dims[0], (3, 3, 3), dtypes, rngs=rngs)
        blocks = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(cin, cout, dtypes, rngs=rngs))
                cin = cout
            if i < len(cfg.dim_mult) - 1:
                mode = "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"
                blocks.append(Resample(cout, mode, dtypes, rngs=rngs))
        self.blocks = nnx.List(blocks)
        self.mid = MidBlock(dims[-1], dtypes, rngs=rngs)
        self._build_head(dims[-1], 2 * cfg.z_dim, dtypes, rngs)


class Decoder3d(_Coder):
    """[B, T', h, w, z_dim] -> [B, T, 8h, 8w, 3] with T = 4 T' (first chunk: 4 T' - 3)."""

    mid_first = True

    def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
        dtypes = cfg.dtypes
        mult = cfg.dim_mult
        dims = [cfg.base_dim * m for m in (mult[-1], *mult[::-1])]
        temporal_upsample = cfg.temporal_downsample[::-1]
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], (3, 3, 3), dtypes, rngs=rngs)
        self.mid = MidBlock(dims[0], dtypes, rngs=rngs)
        blocks = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                cin //= 2  # the previous upsample halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(cin, cout, dtypes, rngs=rngs))
                cin = cout
            if i < len(mult) - 1:
                mode = "upsample3d" if temporal_upsample[i] else "upsample2d"
                blocks.append(Resample(cout, mode, dtypes, rngs=rngs))
        self.blocks = nnx.List(blocks)
        self._build_head(dims[-1], 3, dtypes, rngs)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeCache:
    """State carried between streaming decode calls.

    `feats`: the decoder's conv caches (fixed shapes, zeros before the first
    chunk). `started` is static (part of the tree structure), so a jitted
    step compiles once for the first chunk and once for all later chunks.
    """
    feats: Any
    started: bool = dataclasses.field(default=False, metadata=dict(static=True))


class WanVAE(nnx.Module):
    """Wan2.1 video VAE: `encode` (posterior mean), `decode`, and streaming `decode_chunk`."""

    def __init__(self, cfg: WanVAEConfig = WanVAEConfig(), *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtypes = cfg.dtypes
        self.encoder = Encoder3d(cfg, rngs=rngs)
        # 1x1x1 convs between encoder output / latents and decoder input (the
        # original's top-level conv1 / conv2).
        self.quant_conv = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, (1, 1, 1), dtypes, rngs=rngs)
        self.post_quant_conv = CausalConv3d(cfg.z_dim, cfg.z_dim, (1, 1, 1), dtypes, rngs=rngs)
        self.decoder = Decoder3d(cfg, rngs=rngs)

    # -- input checks (user-facing) --

    def _check_video(self, video):
        if video.ndim != 5 or video.shape[-1] != 3:
            raise ValueError(f"encode expects video f32[B, T, H, W, 3] (channels-last RGB), got shape {video.shape}")
        t, h, w = video.shape[1:4]
        tf, sf = self.cfg.temporal_factor, self.cfg.spatial_factor
        if (t - 1) % tf:
            raise ValueError(
                f"encode needs 1 + {tf}k frames (the first frame alone, then groups of {tf}); got {t} frames. "
                f"Trim or pad the clip to {1 + (t - 1) // tf * tf} or {1 + -(-(t - 1) // tf) * tf} frames.")
        if h % sf or w % sf:
            raise ValueError(f"encode needs height and width divisible by {sf}, got {h}x{w}")

    def _check_latents(self, z):
        if z.ndim != 5 or z.shape[-1] != self.cfg.z_dim:
            raise ValueError(
                f"decode expects latents f32[B, T, H, W, {self.cfg.z_dim}] (channels-last), got shape {z.shape}")

    # -- encoder --

    def _encode_chunk(self, x, cache, first):
        h, cache = self.encoder(x, cache, first)
        mean = self.quant_conv(h)[0][..., :self.cfg.z_dim]
        return mean.astype(jnp.float32), cache

    @nnx.jit
    def encode(self, video: jax.Array) -> jax.Array:
        """f32[B, T, H, W, 3] in [-1, 1], T = 1 + 4k -> posterior mean f32[B, 1+k, H/8, W/8, z_dim].

        Unnormalised (apply `cfg.normalize` for the DiT). As the original: the
        first frame alone, then groups of 4 frames, carrying the conv caches.
        """
        self._check_video(video)
        b, t, h, w, _ = video.shape
        tf = self.cfg.temporal_factor
        cache = self.encoder.init_cache(b, h, w)
        first, cache = self._encode_chunk(video[:, :1], cache, first=True)
        if t == 1:
            return first
        groups = jnp.moveaxis(video[:, 1:].reshape(b, (t - 1) // tf, tf, h, w, 3), 1, 0)

        def step(cache, x):
            z, cache = self._encode_chunk(x, cache, first=False)
            return cache, z

        _, rest = jax.lax.scan(step, cache, groups)  # [k, B, 1, h, w, z]
        rest = jnp.moveaxis(rest, 0, 1).reshape(b, -1, *rest.shape[3:])
        return jnp.concatenate([first, rest], axis=1)

    # -- decoder --

    def init_decode_cache(self, batch: int, latent_h: int, latent_w: int) -> DecodeCache:
        """The empty cache for streaming the decode of latents [batch, *, latent_h, latent_w, z_dim]."""
        return DecodeCache(self.decoder.init_cache(batch, latent_h, latent_w), started=False)

    def decode_chunk(self, z: jax.Array, cache: DecodeCache) -> tuple[jax.Array, DecodeCache]:
        """Decode the next n latent frames of a shot, continuing from `cache`.

        z f32[B, n, h, w, z_dim] (unnormalised) -> frames f32[B, n', 8h, 8w, 3] in
        [-1, 1] with n' = 1 + 4(n-1) for the first chunk of a shot and 4n after,
        and the updated cache. Any split of a shot into chunks gives the same
        frames as decoding it whole.
        """
        self._check_latents(z)
        x = self.post_quant_conv(z)[0]
        x, feats = self.decoder(x, cache.feats, first=not cache.started)
        return jnp.clip(x.astype(jnp.float32), -1.0, 1.0), DecodeCache(feats, started=True)

    @nnx.jit
    def decode(self, z: jax.Array) -> jax.Array:
        """f32[B, T', h, w, z_dim] (unnormalised) -> f32[B, 1 + 4(T'-1), 8h, 8w, 3] in [-1, 1].

        One latent frame at a time, as the original, so memory stays that of a
        single step however long the clip.
        """
        self._check_latents(z)
        b, t, h, w, _ = z.shape
        first, cache = self.decode_chunk(z[:, :1], self.init_decode_cache(b, h, w))
        if t == 1:
            return first

        def step(cache, zt):
            x, cache = self.decode_chunk(zt[:, None], cache)
            return cache, x

        _, rest = jax.lax.scan(step, cache, jnp.moveaxis(z[:, 1:], 1, 0))  # [T'-1, B, 4, H, W, 3]
        rest = jnp.moveaxis(rest, 0, 1).reshape(b, -1, *rest.shape[3:])
        return jnp.concatenate([first, rest], axis=1)


@functools.partial(jax.jit, static_argnums=0)
def _decode_step(graphdef, state, z, cache):
    return nnx.merge(graphdef, state).decode_chunk(z, cache)


def decode_step(vae: WanVAE, z: jax.Array, cache: DecodeCache) -> tuple[jax.Array, DecodeCache]:
    """Jitted `vae.decode_chunk`: the parameters travel as an argument (not
    baked in as constants), one compile per chunk shape and per `started`.

    Loop: cache = vae.init_decode_cache(B, h, w); then for each chunk
    frames, cache = decode_step(vae, z_chunk, cache).
    """
    graphdef, state = nnx.split(vae)
    return _decode_step(graphdef, state, z, cache)
