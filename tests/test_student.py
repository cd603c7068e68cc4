"""Cached chunked student against the block-causal full-sequence forward (and direct WanDiT K/V)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from shotstream_jax import context, schedule
from shotstream_jax.models import student
from shotstream_jax.models.wan_dit import TextKV, WanDiT, WanDiTConfig
from tests import hlo

THETA = 1 / 6
SHOT = 9  # latent frames per shot in these tests: 3 chunks
TS = schedule.student_timesteps()


@pytest.fixture(scope="module")
def setup():
    cfg = WanDiTConfig.from_size("tiny", text_dim=32, freq_dim=32, text_len=16)
    dit = WanDiT(cfg, rngs=nnx.Rngs(0))
    text = jax.random.normal(jax.random.PRNGKey(7), (1, 6, 16, 32))  # 6 shot prompts
    return cfg, dit, dit.encode_text(text)


def _prompt(tkv, p):
    return TextKV(tkv.k[:, :, p], tkv.v[:, :, p])


def reference_shot(dit, ctx, layout, tkv, key, hw, frames=SHOT, theta=THETA):
    """Chunk-by-chunk sampling where every pass is `full_sequence_velocity` over the whole shot."""
    noise, k_steps = jax.random.normal(jax.random.split(key)[0], (1, frames, *hw, 16)), jax.random.split(key)[1]
    sig = np.asarray(schedule.sigma_of(jnp.asarray(TS)))
    fwd = jax.jit(lambda lat, t: student.full_sequence_velocity(dit, ctx, lat, t, tkv, layout, shot_theta=theta))
    shot = jnp.zeros_like(noise)
    for c in range(frames // 3):
        sl = slice(3 * c, 3 * c + 3)
        x = noise[:, sl]
        kc = jax.random.fold_in(k_steps, c)
        for i in range(len(TS)):
            t = jnp.zeros((1, frames)).at[:, sl].set(TS[i])
            x0 = x - sig[i] * fwd(shot.at[:, sl].set(x), t)[:, sl]
            if i < len(TS) - 1:
                x = schedule.add_noise_sigma(x0, jax.random.normal(jax.random.fold_in(kc, i), x.shape), sig[i + 1])
        shot = shot.at[:, sl].set(x0)
    return shot


def test_chunked_generation_matches_full_sequence_two_shots(setup):
    cfg, dit, tkv = setup
    gd, st = nnx.split(dit)
    hw = (4, 4)
    kw = dict(shot_theta=THETA, timesteps=TS, latent_hw=hw)

    # Shot 0: empty (masked) global cache, single prompt 0, target in RoPE shot 1.
    lay0 = context.shot_layout([], 0, SHOT)
    cache = student.init_cache(cfg, 1, hw, shot_frames=SHOT)
    got0, cache = student.generate_shot(gd, st, cache, jax.random.PRNGKey(0), _prompt(tkv, 0), lay0.target_shot, **kw)
    want0 = reference_shot(dit, None, lay0, _prompt(tkv, 0), jax.random.PRNGKey(0), hw)
    np.testing.assert_allclose(got0, want0, rtol=1e-5, atol=1e-5)

    # Shot 1: 6 context frames of shot 0, multi-caption context pass, prompt 1 for the target.
    picks = context.sample_context([SHOT])
    ctx = jnp.stack([got0[:, f] for _, f in picks], axis=1)
    lay1 = context.shot_layout([s for s, _ in picks], 1, SHOT)
    cache = student.fill_global_cache(gd, st, cache, ctx, tkv, lay1.frame_shot[:6], lay1.frame_prompt[:6],
                                      None, THETA)
    assert int(cache.num_local) == 0
    _, (k, v) = dit(ctx, jnp.zeros((1, 6)), text_kv=tkv, frame_prompt=lay1.frame_prompt[:6],
                    frame_pos=jnp.arange(6), frame_shot=lay1.frame_shot[:6], shot_theta=THETA, return_kv=True)
    np.testing.assert_allclose(cache.global_k, k, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cache.global_v, v, rtol=1e-6, atol=1e-6)
    assert bool(cache.global_valid.all())

    # The local cache fills in chunk order, in place: chunk c's step commits chunk c-1 and its
    # denoising passes write chunk c's slot; slots past it keep their old contents.
    noise_key = jax.random.PRNGKey(1)
    prev = np.asarray(cache.local_k)
    ft = cache.frame_tokens
    chunks = []
    for c, (x0, cache) in enumerate(student.shot_chunks(gd, st, cache, noise_key, _prompt(tkv, 1),
                                                        lay1.target_shot, **kw)):
        now = np.asarray(cache.local_k)
        assert int(cache.num_local) == 3 * c
        np.testing.assert_array_equal(now[:, :, 3 * (c + 1) * ft:], prev[:, :, 3 * (c + 1) * ft:])
        np.testing.assert_array_equal(now[:, :, :3 * max(c - 1, 0) * ft], prev[:, :, :3 * max(c - 1, 0) * ft])
        prev = now
        chunks.append(x0)
    cache = student.commit_chunk(gd, st, cache, chunks[-1], _prompt(tkv, 1), lay1.target_shot, THETA)
    got1 = jnp.concatenate(chunks, axis=1)
    want1 = reference_shot(dit, ctx, lay1, tkv, noise_key, hw)
    np.testing.assert_allclose(got1, want1, rtol=1e-5, atol=1e-5)

    # Committed local K/V = the shot's clean K/V in the block-causal full forward.
    _, (kf, vf) = student.full_sequence_velocity(dit, ctx, got1, jnp.zeros((1, SHOT)), tkv, lay1,
                                                 shot_theta=THETA, return_kv=True)
    np.testing.assert_allclose(cache.local_k, kf[:, :, 6 * ft:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cache.local_v, vf[:, :, 6 * ft:], rtol=1e-5, atol=1e-5)


def _story(gd, st, cfg, tkv, n_shots, hw, key):
    """Shots generated one after another; shot s conditions on frames of shots < s."""
    cache = student.init_cache(cfg, 1, hw, shot_frames=SHOT)
    shots = []
    for s in range(n_shots):
        picks = context.sample_context([SHOT] * s)
        lay = context.shot_layout([a for a, _ in picks], s, SHOT)
        if s == 0:
            ctx, valid = jnp.zeros((1, 6, *hw, 16)), jnp.zeros((1, 6), bool)
        else:
            ctx, valid = jnp.stack([shots[a][:, f] for a, f in picks], axis=1), jnp.ones((1, 6), bool)
        cache = student.fill_global_cache(gd, st, cache, ctx, tkv, lay.frame_shot[:6], lay.frame_prompt[:6],
                                          valid, THETA)
        lat, cache = student.generate_shot(gd, st, cache, jax.random.fold_in(key, s), _prompt(tkv, s),
                                           lay.target_shot, shot_theta=THETA, timesteps=TS, latent_hw=hw)
        shots.append(lat)
    return shots


def test_one_compile_for_five_shots_and_causality(setup):
    cfg, dit, tkv = setup
    gd, st = nnx.split(dit)
    hw = (4, 6)  # a shape no other test uses, so every compile below is counted
    fns = (student.fill_global_cache, student.chunk_step, student.commit_chunk)
    before = [f._cache_size() for f in fns]
    five = _story(gd, st, cfg, tkv, 5, hw, jax.random.PRNGKey(3))
    # chunk_step: a shot's first chunk (nothing to commit) and every later one.
    assert [f._cache_size() - b for f, b in zip(fns, before)] == [1, 2, 1]
    assert all(bool(jnp.isfinite(s).all()) for s in five)
    two = _story(gd, st, cfg, tkv, 2, hw, jax.random.PRNGKey(3))
    for a, b in zip(two, five[:2]):
        np.testing.assert_array_equal(a, b)


def test_rollout_matches_chunk_functions_and_has_gradient(setup):
    """Reference: the jitted chunk_step(exit_step) loop (commits deferred) with the same keys."""
    cfg, dit, tkv = setup
    gd, st = nnx.split(dit)
    hw = (4, 4)
    tk = _prompt(tkv, 0)
    noise, k_steps = student.shot_noise(jax.random.PRNGKey(4), student.init_cache(cfg, 1, hw, shot_frames=SHOT), 1, hw)
    rollout = jax.jit(student.rollout_shot, static_argnums=0)
    for exit_step in (1, 3):
        cache = student.init_cache(cfg, 1, hw, shot_frames=SHOT)
        got, cache_r, t_from, t_to = rollout(gd, st, cache, noise, k_steps, tk, 1, exit_step, THETA, TS)
        cache = student.init_cache(cfg, 1, hw, shot_frames=SHOT)
        want, x0 = [], None
        for c in range(3):
            x0, cache = student.chunk_step(gd, st, cache, x0, noise[:, 3 * c:3 * c + 3],
                                           jax.random.fold_in(k_steps, c), tk, 1, THETA, TS, exit_step)
            want.append(x0)
        np.testing.assert_allclose(got, jnp.concatenate(want, 1), rtol=1e-5, atol=1e-5)
        assert int(cache_r.num_local) == SHOT
        # The original's denoised_timestep_from/to: unwarped step values of the exit step and the next one.
        assert (int(t_from), int(t_to)) == {1: (740, 500), 3: (260, 0)}[exit_step]

    def loss(state):
        cache = student.init_cache(cfg, 1, hw, shot_frames=SHOT)
        return jnp.sum(student.rollout_shot(gd, state, cache, noise, k_steps, tk, 1, 2, THETA, TS)[0] ** 2)

    grads = jax.jit(jax.grad(loss))(st)
    norms = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and sum(norms) > 0


def test_rollout_gradient_equals_one_pass_self_forcing_loop(setup):
    """Reference: the one-pass Self-Forcing loop (`self_forcing_training.py`) written out here on raw
    `chunk_velocity` calls: chunk by chunk on one cache, every pass under stop_gradient but each
    chunk's exit-step prediction (live weights and text K/V); values and jax.grad of a weighted sum."""
    cfg, dit, tkv = setup
    hw, exit_step = (4, 4), 1
    gd, st = nnx.split(dit)
    tk = _prompt(tkv, 0)
    noise, k_steps = student.shot_noise(jax.random.PRNGKey(5), student.init_cache(cfg, 1, hw, shot_frames=SHOT), 1, hw)
    w = jax.random.normal(jax.random.PRNGKey(6), noise.shape)
    sig = schedule.sigma_of(jnp.asarray(TS))

    def reference(state, tk):
        live, frozen = nnx.merge(gd, state), nnx.merge(gd, jax.lax.stop_gradient(state))
        cache, out = student.init_cache(cfg, 1, hw, shot_frames=SHOT), []
        for c in range(SHOT // 3):
            x, kc = noise[:, 3 * c:3 * c + 3], jax.random.fold_in(k_steps, c)
            for i in range(exit_step + 1):
                model, text = (live, tk) if i == exit_step else (frozen, jax.lax.stop_gradient(tk))
                v, cache = student.chunk_velocity(model, cache, x, jnp.full((1, 3), TS[i]), text, 1, THETA)
                x0 = x - sig[i] * v
                if i < exit_step:
                    x = schedule.add_noise_sigma(x0, jax.random.normal(jax.random.fold_in(kc, i), x.shape), sig[i + 1])
            out.append(x0)
            _, cache = student.chunk_velocity(frozen, jax.lax.stop_gradient(cache), jax.lax.stop_gradient(x0),
                                              jnp.zeros((1, 3)), jax.lax.stop_gradient(tk), 1, THETA)
            cache = cache.replace(num_local=cache.num_local + 3)
        return jnp.concatenate(out, 1)

    def rollout(graphdef, state, tk, grad=True):
        cache = student.init_cache(cfg, 1, hw, shot_frames=SHOT)
        return student.rollout_shot(graphdef, state, cache, noise, k_steps, tk, 1, exit_step, THETA, TS,
                                    grad=grad)[0]

    def grads(f):
        return jax.jit(jax.value_and_grad(lambda s, t: (jnp.sum(f(s, t) * w), f(s, t)), (0, 1), has_aux=True))

    (_, want), want_grads = grads(reference)(st, tk)
    # The layer scan with the cache in its carry, and the remat one with cache slices as xs/ys.
    for remat in (False, True):
        g = nnx.split(WanDiT(dataclasses.replace(cfg, remat=remat), rngs=nnx.Rngs(0)))[0]
        (_, got), got_grads = grads(lambda s, t: rollout(g, s, t))(st, tk)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got_grads, want_grads)
    # Without gradient the rollout returns its own (no-grad) predictions: the same latents.
    np.testing.assert_allclose(jax.jit(rollout, static_argnums=(0, 3))(gd, st, tk, False), want, rtol=1e-5, atol=1e-5)


def test_chunk_step_lowered_for_cuda_has_no_cache_copy_or_dense_mask(monkeypatch):
    # Reference: the shapes of the StableHLO ops of the chunk step (a commit pass and 4
    # denoising passes) lowered for CUDA with the Pallas kernel, which needs no GPU.
    cfg = WanDiTConfig.from_size("tiny", text_dim=32, freq_dim=32, text_len=16, dtype="bfloat16",
                                 attention_impl="pallas")
    graphdef, state = nnx.split(nnx.eval_shape(lambda: WanDiT(cfg, rngs=nnx.Rngs(0))))
    hw = (8, 8)
    cache = jax.eval_shape(lambda: student.init_cache(cfg, 1, hw))
    lq, lk = 3 * cache.frame_tokens, cache.k.shape[2]  # 48 queries, a 432-key buffer
    x = jax.ShapeDtypeStruct((1, 3, *hw, 16), jnp.float32)
    tkv = TextKV(*(jax.ShapeDtypeStruct((2, 1, 16, 2, 32), jnp.bfloat16),) * 2)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # pass the backend check
    text = student.chunk_step.trace(graphdef, state, cache, x, x, jax.random.PRNGKey(0), tkv, 1, THETA,
                                    jnp.asarray(TS)).lower(lowering_platforms=("cuda",)).as_text()
    assert "__gpu$xla.gpu.triton" in text  # the Pallas kernel
    # The layers' K/V go into the buffer in place (before this change: a 480-key concatenate per pass).
    assert set(hlo.results(text, "dynamic_update_slice")) == {"2x1x432x2x32xbf16"}
    concats = hlo.results(text, "concatenate")
    assert concats and max(hlo.elements(s) for s in concats) < lk * cfg.num_heads * cfg.head_dim
    assert max(hlo.elements(s) for s in hlo.types(text, "i1")) < lq * lk
