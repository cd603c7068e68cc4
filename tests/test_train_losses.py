"""DMD / critic / ODE losses against the formulas of model/dmd_frameconcat.py written out by hand in numpy."""
import jax
import jax.numpy as jnp
import numpy as np

from shotstream_jax import schedule
from shotstream_jax.train import lora, losses

SHIFT = 8.0


def _scores():
    """Fixed stand-in real / fake x0 predictors (any functions of (x_t, t) will do)."""
    a = np.random.default_rng(0).standard_normal((3, 2, 2, 4)).astype(np.float32)

    def real(xt, t):
        return 0.5 * xt + a * (t / 1000.0)

    def fake(xt, t):
        return 0.8 * xt - 0.1 * a

    return real, fake


def test_dmd_generator_gradient_by_hand():
    """d/dtheta of L for x = W z: dL/dx = g / x.size with g = (fake - real) / mean|x - real| (DMD eq. 7-8)."""
    real, fake = _scores()
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 4)).astype(np.float32)
    z = rng.standard_normal((3, 2, 2, 4)).astype(np.float32)
    key = jax.random.PRNGKey(7)

    def loss(w):
        x = jnp.einsum("fhwi,io->fhwo", z, w)
        return losses.dmd_generator_loss(x, key, real, fake, min_t=20.0, max_t=980.0, shift=SHIFT)

    (value, aux), grad_w = jax.value_and_grad(loss, has_aux=True)(jnp.asarray(w))

    # by hand: the same t and noise the loss draws, then the closed form
    k_t, k_eps = jax.random.split(key)
    t = float(np.clip(schedule.timesteps()[int(jax.random.randint(k_t, (), 0, 1000))], 20, 980))
    assert abs(float(aux["dmd_t"]) - t) < 1e-3
    x = np.einsum("fhwi,io->fhwo", z, w).astype(np.float64)
    s = float(schedule.sigmas()[int(np.argmin(np.abs(schedule.timesteps() - t)))])
    eps = np.asarray(jax.random.normal(k_eps, x.shape, jnp.float32), np.float64)
    xt = (1 - s) * x + s * eps
    g = (np.asarray(fake(xt, t)) - np.asarray(real(xt, t))) / np.mean(np.abs(x - np.asarray(real(xt, t))))
    expected_loss = 0.5 * np.mean(g ** 2)
    dldx = g / x.size
    expected_grad = np.einsum("fhwi,fhwo->io", z, dldx)
    np.testing.assert_allclose(float(value), expected_loss, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(grad_w), expected_grad, rtol=1e-3, atol=1e-7)


def test_critic_loss_is_flow_matching_on_generated_sample():
    """mean((v_fake(x_t, t) - (eps - x))^2), no gradient into x."""
    key = jax.random.PRNGKey(3)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 2, 2, 4)), jnp.float32)

    def fake_v(xt, t):
        return 0.3 * xt

    value, gx = jax.value_and_grad(lambda x: losses.critic_loss(x, key, fake_v, min_t=20.0, max_t=980.0,
                                                                shift=SHIFT))(x)
    k_t, k_eps = jax.random.split(key)
    t = jnp.clip(schedule.timesteps()[int(jax.random.randint(k_t, (), 0, 1000))], 20, 980)
    eps = jax.random.normal(k_eps, x.shape)
    xt = schedule.add_noise(x, eps, t)
    np.testing.assert_allclose(float(value), float(jnp.mean((0.3 * xt - (eps - x)) ** 2)), rtol=1e-5)
    assert not np.asarray(gx).any()


def test_ode_regression_steps_include_t0_which_the_loss_masks():
    """Reference (model/ode_regression.py, step list [1000, 740, 500, 260, 1001] warped so the last is t=0):
    one of the 5 trajectory states per chunk (the 5th is the clean latent at t=0), frames of a chunk
    share it, loss = mse over frames with t > 0 only."""
    ode = jnp.arange(1, 5)[:, None, None, None, None] * jnp.ones((4, 24, 1, 1, 2))  # state i holds i + 1
    clean = jnp.zeros((24, 1, 1, 2))
    step_t = jnp.asarray([1000.0, 900.0, 800.0, 700.0])
    seen = {}

    def x0_fn(x, t):
        seen["x"], seen["t"] = x, t
        return x

    key = jax.random.PRNGKey(0)
    loss = losses.ode_regression_loss(ode, clean, key, x0_fn, chunk_frames=3, step_t=step_t)
    idx = np.repeat(np.asarray(jax.random.randint(key, (8,), 0, 5)), 3)  # by hand, the same draw
    assert set(idx) == {0, 1, 2, 3, 4}, "pick a key that draws every state, t=0 included"
    want_x = np.where(idx < 4, idx + 1, 0)
    np.testing.assert_array_equal(np.asarray(seen["x"][:, 0, 0, 0]), want_x)
    np.testing.assert_allclose(np.asarray(seen["t"]), np.array([1000.0, 900.0, 800.0, 700.0, 0.0])[idx])
    np.testing.assert_allclose(float(loss), np.mean(want_x[idx < 4].astype(float) ** 2), rtol=1e-6)


def test_context_and_text_dropout_as_the_reference():
    """Reference trainers: `random.random() < 0.1` zeroes the context latents and sets their RoPE shot
    flags to 0 (distillation_frameconcat.py), or zeroes the prompt embeddings (trainer/ode_regression.py)."""
    from shotstream_jax.train.stages import drop_context, drop_text
    ex = {"context": jnp.ones((6, 2, 2, 4)), "context_shot": jnp.asarray([0, 0, 1, 1, 2, 2]),
          "text": jnp.ones((3, 5, 8))}
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    out = jax.vmap(lambda k: drop_context(ex, k, 0.1))(keys)
    dropped = np.asarray(out["context"].max(axis=(1, 2, 3, 4)) == 0)
    assert 0.08 < dropped.mean() < 0.12
    np.testing.assert_array_equal(np.asarray(out["context_shot"])[dropped], 0)
    np.testing.assert_array_equal(np.asarray(out["context_shot"])[~dropped], np.broadcast_to(ex["context_shot"],
                                                                                            ((~dropped).sum(), 6)))
    assert np.asarray(out["context"])[~dropped].min() == 1
    txt = np.asarray(jax.vmap(lambda k: drop_text(ex, k, 0.1))(keys)["text"].max(axis=(1, 2, 3)) == 0)
    assert 0.08 < txt.mean() < 0.12


def test_lora_starts_at_the_base_model_and_merges_w_plus_scaled_ab():
    """W' = W + (alpha / r) A B, zero B at init (peft's LoRA)."""
    rng = np.random.default_rng(0)
    params = {"blocks": {"ffn": {"fc1": {"kernel": jnp.asarray(rng.standard_normal((2, 4, 6)), jnp.float32),
                                          "bias": jnp.zeros((2, 6))}}},
              "head": {"kernel": jnp.ones((4, 3))}}
    ad = lora.init(params, 2, jax.random.PRNGKey(0))
    assert list(ad) == ["blocks/ffn/fc1"]
    same = lora.merge(params, ad, 2.0)
    np.testing.assert_array_equal(same["blocks"]["ffn"]["fc1"]["kernel"], params["blocks"]["ffn"]["fc1"]["kernel"])
    ad["blocks/ffn/fc1"]["b"] = jnp.ones((2, 2, 6))
    merged = lora.merge(params, ad, 2.0)["blocks"]["ffn"]["fc1"]["kernel"]
    a = np.asarray(ad["blocks/ffn/fc1"]["a"])
    np.testing.assert_allclose(merged, params["blocks"]["ffn"]["fc1"]["kernel"] + 2.0 * a @ np.ones((2, 2, 6)),
                               rtol=1e-5)


def test_ode_pairs_keep_the_reference_steps():
    """Teacher_Ode_Sample.py saves the inputs of steps [0, 13, 25, 37] of its 50-step sampler."""
    from shotstream_jax.config import get_config
    from shotstream_jax.train.stages import ode_save_steps
    assert ode_save_steps(get_config("wan_1_3b", "ode_pairs")) == (0, 13, 25, 37)


def test_copy_frame_puts_the_target_first_frame_last_in_the_context():
    """Reference: the example written out by hand; the rate is the share of examples that get it."""
    from shotstream_jax.train.stages import copy_frame
    ex = {"context": jnp.ones((6, 2, 2, 4)), "context_shot": jnp.asarray([0, 0, 1, 1, 2, 2]),
          "target": jnp.arange(3 * 2 * 2 * 4, dtype=jnp.float32).reshape(3, 2, 2, 4) + 10.0}
    out = jax.vmap(lambda k: copy_frame(ex, k, 0.25))(jax.random.split(jax.random.PRNGKey(0), 4000))
    copied = np.asarray(out["context"][:, -1, 0, 0, 0] != 1.0)
    assert 0.22 < copied.mean() < 0.28
    np.testing.assert_array_equal(np.asarray(out["context"])[copied, -1], np.broadcast_to(ex["target"][0],
                                                                                         (copied.sum(), 2, 2, 4)))
    np.testing.assert_array_equal(np.asarray(out["context"])[:, :-1], 1.0)
    np.testing.assert_array_equal(np.asarray(out["context"])[~copied, -1], 1.0)
    np.testing.assert_array_equal(np.asarray(out["context_shot"]), np.broadcast_to(ex["context_shot"], (4000, 6)))
    np.testing.assert_array_equal(np.asarray(out["target"]), np.broadcast_to(ex["target"], (4000, 3, 2, 2, 4)))


def test_random_copy_makes_the_target_the_last_of_noise_context_frames():
    """Reference: the copy task written out (target frames = last context frame, all context new); the rate is the
    share of examples that become it, the others stay as they were."""
    from shotstream_jax.train.stages import random_copy
    ex = {"context": jnp.ones((6, 2, 2, 4)), "context_shot": jnp.asarray([0, 0, 1, 1, 2, 2]),
          "target": jnp.full((3, 2, 2, 4), 10.0), "text": jnp.full((4, 5, 8), 3.0)}
    out = jax.vmap(lambda k: random_copy(ex, k, 0.25))(jax.random.split(jax.random.PRNGKey(0), 4000))
    ctx, tgt = np.asarray(out["context"]), np.asarray(out["target"])
    task = (ctx != 1.0).all(axis=(1, 2, 3, 4))
    assert 0.22 < task.mean() < 0.28
    np.testing.assert_array_equal(tgt[task], np.broadcast_to(ctx[task, -1:], (task.sum(), 3, 2, 2, 4)))
    assert abs(ctx[task].mean()) < 0.05 and abs(ctx[task].std() - 1.0) < 0.05
    assert not np.array_equal(ctx[task][0], ctx[task][1])   # fresh frames per example
    np.testing.assert_array_equal(ctx[~task], 1.0)
    np.testing.assert_array_equal(tgt[~task], 10.0)
    np.testing.assert_array_equal(np.asarray(out["context_shot"]), np.broadcast_to(ex["context_shot"], (4000, 6)))
    np.testing.assert_array_equal(np.asarray(out["text"]), np.broadcast_to(ex["text"], (4000, 4, 5, 8)))


def test_random_copy_patch_copies_only_the_square_that_stands_out():
    """Reference, per example: the last context frame is one constant latent but for a square of 1..n pixels a side;
    the target is zeros there and that square's values at the same place, in every frame."""
    from shotstream_jax.train.stages import random_copy
    ex = {"context": jnp.ones((6, 8, 8, 4)), "context_shot": jnp.asarray([0, 0, 1, 1, 2, 2]),
          "target": jnp.full((3, 8, 8, 4), 10.0)}
    out = jax.vmap(lambda k: random_copy(ex, k, 1.0, 3))(jax.random.split(jax.random.PRNGKey(1), 300))
    sides = set()
    for ctx, tgt in zip(np.asarray(out["context"]), np.asarray(out["target"])):
        last = ctx[-1]
        background = np.median(last.reshape(-1, 4), axis=0)
        odd = ~np.isclose(last, background).all(-1)
        ys, xs = np.nonzero(odd)
        side = ys.max() - ys.min() + 1
        assert xs.max() - xs.min() + 1 == side and odd.sum() == side * side and 1 <= side <= 3
        sides.add(int(side))
        want = np.where(odd[..., None], last, 0.0)
        np.testing.assert_array_equal(tgt, np.broadcast_to(want, (3, 8, 8, 4)))
    assert sides == {1, 2, 3}
