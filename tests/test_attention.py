"""Attention kernels against the XLA einsum reference (itself checked against numpy).

The Pallas GPU kernel runs in Pallas interpret mode and the TPU splash kernel
in the Pallas TPU interpreter, so everything here runs on CPU; shapes are tiny
and tiles small (16-32) so that padding, several tiles and tile skipping occur.
"""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shotstream_jax.kernels import IMPLS, MaskSpec, attention
from shotstream_jax.kernels import flash_gpu, splash_tpu
from shotstream_jax.kernels.attention import _xla

# The package re-exports the function `attention` under the module's name.
attention_mod = importlib.import_module("shotstream_jax.kernels.attention")
SMALL_TILES = flash_gpu.BlockSizes(block_q=32, block_k=32, block_q_bwd=32, block_k_bwd=16)


def _qkv(b, lq, lk, h, d, dtype=jnp.float32, seed=0):
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (jax.random.normal(kq, (b, lq, h, d), dtype),
            jax.random.normal(kk, (b, lk, h, d), dtype),
            jax.random.normal(kv, (b, lk, h, d), dtype))


def _mask(kind, b, lq, lk):
    """Masks shaped like the student's: a partly written cache (a key prefix), chunked queries."""
    if kind is None:
        return None
    # The last example sees only the first 3/5 of the keys (a cache buffer written so far).
    kv_len = jnp.full((b,), lk, jnp.int32).at[-1].set(3 * lk // 5) if kind in ("len", "both") else None
    if kind == "len":
        return MaskSpec(kv_len=kv_len)
    # Keys are frames of 30 tokens; the queries are the last lq keys' tokens.
    kv_chunk = jnp.arange(lk, dtype=jnp.int32) // 30
    q_chunk = kv_chunk[lk - lq:]
    return MaskSpec(kv_len=kv_len, q_chunk=q_chunk, kv_chunk=kv_chunk)


def _rel_err(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _check_against_reference(fn, b, lq, lk, h, d, dtype, mask_kind, tol):
    q, k, v = _qkv(b, lq, lk, h, d, dtype)
    mask = _mask(mask_kind, b, lq, lk)
    w = jax.random.normal(jax.random.PRNGKey(7), (b, lq, h, d), jnp.float32)
    up = lambda x: x.astype(jnp.float32)

    def loss(f):
        return lambda q, k, v: jnp.sum(f(q, k, v, mask).astype(jnp.float32) * w)

    out = jax.jit(lambda q, k, v: fn(q, k, v, mask))(q, k, v)
    ref = _xla(up(q), up(k), up(v), mask)
    assert out.dtype == dtype and out.shape == q.shape
    assert _rel_err(out, ref) < tol
    grads = jax.jit(jax.grad(loss(fn), argnums=(0, 1, 2)))(q, k, v)
    ref_grads = jax.grad(loss(_xla), argnums=(0, 1, 2))(up(q), up(k), up(v))
    for name, g, r in zip("qkv", grads, ref_grads):
        assert g.dtype == dtype
        assert _rel_err(g, r) < tol, f"d{name}"


def _pallas(q, k, v, mask):
    return flash_gpu.flash_attention(q, k, v, mask, interpret=True, block_sizes=SMALL_TILES)


# (B, Lq, Lk, H, D, dtype, mask): square self-attention, cache-shaped (Lq < Lk),
# short cross-attention keys; lengths deliberately not multiples of the tiles.
CASES = [
    (1, 96, 96, 2, 64, jnp.float32, None),
    (2, 90, 90, 2, 32, jnp.float32, "chunk"),
    (2, 60, 150, 2, 64, jnp.float32, "len"),
    (2, 60, 150, 2, 64, jnp.float32, "both"),
    (1, 100, 24, 2, 32, jnp.float32, None),
    (2, 60, 170, 2, 128, jnp.bfloat16, "both"),
    (1, 64, 64, 2, 64, jnp.bfloat16, None),
]


def _case_id(case):
    b, lq, lk, h, d, dtype, mask = case
    return f"B{b}-q{lq}-k{lk}-d{d}-{jnp.dtype(dtype).name}-{mask}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_pallas_interpret_matches_xla(case):
    *shape, dtype, mask_kind = case
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
    _check_against_reference(_pallas, *shape, dtype, mask_kind, tol)


@pytest.mark.parametrize("case", [CASES[1], CASES[3]], ids=_case_id)
def test_tpu_splash_interpret_matches_xla(case):
    *shape, dtype, mask_kind = case
    fn = lambda q, k, v, mask: splash_tpu.splash_attention(q, k, v, mask, interpret=True)
    _check_against_reference(fn, *shape, dtype, mask_kind, 1e-5)


_GPU_CASES = [CASES[3], CASES[5], (1, 1560, 9360, 4, 128, jnp.bfloat16, "len")]


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="runs the compiled kernels on a GPU")
@pytest.mark.parametrize("impl, case", [("pallas", c) for c in _GPU_CASES]
                         # cuDNN's flash attention takes bf16/f16 only
                         + [("cudnn", c) for c in _GPU_CASES if c[5] == jnp.bfloat16],
                         ids=lambda x: x if isinstance(x, str) else _case_id(x))
def test_gpu_kernels_match_xla(impl, case):
    # The compiled kernels with their default tiles; the reference in float32 (conftest: full matmul
    # precision); f32 kernels may run their dots in TF32.
    *shape, dtype, mask_kind = case
    fn = lambda q, k, v, mask: attention(q, k, v, mask, impl=impl)
    _check_against_reference(fn, *shape, dtype, mask_kind, 2e-2 if dtype == jnp.bfloat16 else 2e-3)


def test_dispatch_pallas_interpret_default_tiles():
    q, k, v = _qkv(1, 40, 200, 2, 64)
    mask = _mask("both", 1, 40, 200)
    out = attention(q, k, v, mask, impl="pallas_interpret")
    np.testing.assert_allclose(out, _xla(q, k, v, mask), atol=1e-5, rtol=1e-5)


def test_pallas_skips_fully_masked_tiles():
    # NaN values in whole masked key tiles never reach the output: those tiles
    # are skipped, not multiplied by zero (0 * NaN would be NaN).
    q, k, v = _qkv(1, 32, 128, 2, 32)
    chunk = jnp.repeat(jnp.array([0, 1, 2, 0], jnp.int32), 32)
    mask = MaskSpec(q_chunk=jnp.zeros(32, jnp.int32), kv_chunk=chunk)
    v_nan = v.at[:, 32:96].set(jnp.nan)
    out = _pallas(q, k, v_nan, mask)
    np.testing.assert_allclose(out, _xla(q, k, v, mask), atol=1e-5, rtol=1e-5)
    q_id, kv_id = flash_gpu._ids(mask, 1, 32, 128, 32, 128)
    assert np.asarray(flash_gpu._live_tiles(q_id, kv_id, 32, 32)).tolist() == [[[True, False, False, True]]]


@pytest.mark.parametrize("impl", ["xla", "pallas_interpret", "splash_interpret"])
def test_key_lengths_match_dense_mask_reference(impl, monkeypatch):
    # Reference: the dense-mask einsum path (`_xla`, itself checked against numpy below).
    # Lengths cut key blocks in the middle, one example sees a single block, Lk is no
    # multiple of any block; the XLA path's blocks are made small so that it loops.
    monkeypatch.setattr(attention_mod, "KEY_BLOCK", 32)
    fn = {"xla": lambda q, k, v, m: attention(q, k, v, m, impl="xla"),
          "pallas_interpret": _pallas,
          "splash_interpret": lambda q, k, v, m: splash_tpu.splash_attention(q, k, v, m, interpret=True)}[impl]
    q, k, v = _qkv(3, 40, 150, 2, 32)
    mask = MaskSpec(kv_len=jnp.array([150, 77, 20], jnp.int32))
    w = jax.random.normal(jax.random.PRNGKey(7), q.shape)
    out = jax.jit(lambda q, k, v: fn(q, k, v, mask))(q, k, v)
    np.testing.assert_allclose(out, _xla(q, k, v, mask), atol=1e-5, rtol=1e-5)
    loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v, mask) * w)
    grads = jax.jit(jax.grad(loss(fn), argnums=(0, 1, 2)))(q, k, v)
    for g, r in zip(grads, jax.grad(loss(_xla), argnums=(0, 1, 2))(q, k, v)):
        assert _rel_err(g, r) < 1e-5


def test_xla_blocked_without_mask_matches_reference(monkeypatch):
    # Reference: the dense einsum path. 100 keys in blocks of 32: the last block overlaps the third.
    monkeypatch.setattr(attention_mod, "KEY_BLOCK", 32)
    q, k, v = _qkv(2, 50, 100, 2, 16)
    np.testing.assert_allclose(attention(q, k, v, impl="xla"), _xla(q, k, v, None), atol=1e-5, rtol=1e-5)


def test_pallas_visits_no_key_tile_past_the_prefix(monkeypatch):
    # Reference: ceil(kv_len / block_k) tiles per query tile, counted from the
    # kernel's own loop bounds; NaN in every key tile past the prefix proves none is read.
    counts = []
    tile_lists = flash_gpu._tile_lists

    def counting(live):
        order, count = tile_lists(live)
        jax.debug.callback(lambda c: counts.append(np.asarray(c)), count)
        return order, count

    monkeypatch.setattr(flash_gpu, "_tile_lists", counting)
    q, k, v = _qkv(2, 64, 256, 2, 32)
    kv_len = np.array([70, 200])
    mask = MaskSpec(kv_len=jnp.asarray(kv_len, jnp.int32))
    past = (np.arange(256)[None, :] >= -(-kv_len[:, None] // 32) * 32)[:, :, None, None]
    k_nan, v_nan = (jnp.where(past, jnp.nan, x) for x in (k, v))
    out = jax.block_until_ready(_pallas(q, k_nan, v_nan, mask))
    np.testing.assert_allclose(out, _xla(q, k, v, mask), atol=1e-5, rtol=1e-5)
    (count,) = counts  # [B, query tiles]: the key tiles each program loops over
    assert count.tolist() == [[3, 3], [7, 7]]


def test_splash_visits_no_key_tile_past_the_prefix():
    # Reference: the dense-mask einsum path on clean K/V. NaN in every key tile (128 keys) past
    # each example's prefix would reach the output through 0 * NaN if splash computed that tile.
    q, k, v = _qkv(2, 40, 384, 2, 32)
    kv_len = np.array([100, 200])
    mask = MaskSpec(kv_len=jnp.asarray(kv_len, jnp.int32))
    live = -(-kv_len // 128)  # [1, 2] of 3 tiles
    past = (np.arange(384)[None, :] >= live[:, None] * 128)[:, :, None, None]
    k_nan, v_nan = (jnp.where(past, jnp.nan, x) for x in (k, v))
    out = jax.jit(lambda q, k, v: splash_tpu.splash_attention(q, k, v, mask, interpret=True))(q, k_nan, v_nan)
    np.testing.assert_allclose(out, _xla(q, k, v, mask), atol=1e-5, rtol=1e-5)
    kernel = splash_tpu.make_kernel(mask, 128, 384, interpret=True)
    for n, length in zip(live, kv_len):
        info = splash_tpu.bounded(kernel, jnp.int32(length)).fwd_mask_info
        assert np.asarray(info.block_mask).tolist() == [[[2] * n + [0] * (3 - n)]]


def test_pallas_query_without_keys_gives_zeros():
    # Reference: the contract in flash_gpu's docstring (XLA would give NaN).
    # Batch 0 has no valid key, so no live tile; in batch 1, queries 0-9 sit
    # in a live tile (queries 10-19 see chunk 1) but see only masked logits.
    q, k, v = _qkv(2, 20, 40, 2, 32)
    mask = MaskSpec(kv_len=jnp.array([0, 40], jnp.int32),
                    q_chunk=jnp.repeat(jnp.array([0, 5], jnp.int32), 10),
                    kv_chunk=jnp.ones(40, jnp.int32))
    loss = lambda q, k, v: jnp.sum(_pallas(q, k, v, mask) ** 2)
    out = _pallas(q, k, v, mask)
    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    assert not np.asarray(out[0]).any() and not np.asarray(out[1, :10]).any()
    np.testing.assert_allclose(out[1, 10:], _xla(q, k, v, mask)[1, 10:], atol=1e-5, rtol=1e-5)
    assert all(np.isfinite(g).all() and not np.asarray(g[0]).any() for g in grads)


def test_xla_reference_matches_numpy():
    # Reference: the softmax formula written out in numpy.
    q, k, v = (np.asarray(x, np.float64) for x in _qkv(2, 20, 45, 2, 16))
    mask = _mask("both", 2, 20, 45)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(16)
    logits = np.where(np.asarray(mask.dense(2, 20, 45)), logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    expected = np.einsum("bhqk,bkhd->bqhd", p, v)
    out = attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), mask, impl="xla")
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


def test_unknown_impl_raises():
    q, k, v = _qkv(1, 8, 8, 1, 16)
    with pytest.raises(ValueError, match="unknown attention impl"):
        attention(q, k, v, impl="flash")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the CPU error")
@pytest.mark.parametrize("impl", ["pallas", "cudnn", "tpu_splash"])
def test_accelerator_impl_on_cpu_raises_clearly(impl):
    q, k, v = _qkv(1, 8, 8, 1, 16)
    hint = "pallas_interpret" if impl == "pallas" else "xla"
    with pytest.raises(ValueError, match=hint):
        attention(q, k, v, impl=impl)


def test_auto_picks_per_backend(monkeypatch):
    bf16 = jnp.zeros((1, 8, 2, 128), jnp.bfloat16)
    odd = jnp.zeros((1, 9, 2, 128), jnp.bfloat16)
    chunks = MaskSpec(q_chunk=jnp.zeros(9, jnp.int32), kv_chunk=jnp.zeros(9, jnp.int32))
    picks = {}
    for backend in ("cpu", "gpu", "tpu"):
        monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
        picks[backend] = (attention_mod._auto_impl(bf16, bf16, None),
                          attention_mod._auto_impl(bf16.astype(jnp.float32), bf16, None),
                          attention_mod._auto_impl(odd, odd, chunks))
    assert picks == {"cpu": ("xla",) * 3, "gpu": ("cudnn", "pallas", "pallas"),
                     "tpu": ("tpu_splash",) * 3}
    assert set(IMPLS) == {"auto", "xla", "cudnn", "pallas", "pallas_interpret", "tpu_splash"}


def test_pallas_lowers_for_cuda(monkeypatch):
    # Lowers (no GPU needed) to Triton IR at the student's cache shape, fwd and
    # fwd+bwd. XLA compiles that IR only with the CUDA plugin; see the next test.
    q = jax.ShapeDtypeStruct((1, 4680, 12, 128), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, 42120, 12, 128), jnp.bfloat16)
    mask = MaskSpec(jax.ShapeDtypeStruct((1,), jnp.int32),
                    jax.ShapeDtypeStruct((4680,), jnp.int32),
                    jax.ShapeDtypeStruct((42120,), jnp.int32))
    fwd = lambda q, k, v, m: attention(q, k, v, m, impl="pallas")
    loss = lambda q, k, v, m: fwd(q, k, v, m).astype(jnp.float32).sum()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # pass the backend check
    for f, kernels in ((fwd, 1), (jax.grad(loss, argnums=(0, 1, 2)), 3)):
        text = jax.jit(f).trace(q, kv, kv, mask).lower(lowering_platforms=("cuda",)).as_text()
        assert text.count("__gpu$xla.gpu.triton") == kernels


def test_pallas_triton_ir_compiles_for_sm90(monkeypatch, tmp_path):
    # Reference: upstream Triton's own compiler (Triton IR -> PTX -> cubin via
    # its bundled ptxas, no GPU needed). Skipped unless `triton` is importable;
    # XLA's built-in Triton may differ in version from the pip package.
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from jax._src.pallas.triton import lowering

    modules = []
    lower = lowering.lower_jaxpr_to_triton_module

    def capture(*args, **kwargs):
        result = lower(*args, **kwargs)
        modules.append(result.module.operation.get_asm(enable_debug_info=False))
        return result

    monkeypatch.setattr(lowering, "lower_jaxpr_to_triton_module", capture)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    q = jax.ShapeDtypeStruct((1, 300, 2, 128), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, 1000, 2, 128), jnp.bfloat16)
    mask = MaskSpec(jax.ShapeDtypeStruct((1,), jnp.int32),
                    jax.ShapeDtypeStruct((300,), jnp.int32),
                    jax.ShapeDtypeStruct((1000,), jnp.int32))
    loss = lambda q, k, v, m: attention(q, k, v, m, impl="pallas").astype(jnp.float32).sum()
    jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, kv, kv, mask).lower(
        lowering_platforms=("cuda",))
    assert len(modules) == 3  # forward, dK/dV, dQ
    for i, text in enumerate(modules):
        path = tmp_path / f"kernel{i}.ttir"
        path.write_text(text)
        compiled = triton.compile(str(path), target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": 8, "num_stages": 2})
        assert compiled.asm["cubin"]
