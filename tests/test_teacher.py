"""Teacher against direct WanDiT calls: the full FrameConcat forward sliced, single-prompt calls per frame group."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from shotstream_jax import context, schedule
from shotstream_jax.models import teacher
from shotstream_jax.models.wan_dit import WanDiT, WanDiTConfig

H = W = 4


def _model(layers=2):
    cfg = dataclasses.replace(
        WanDiTConfig.from_size("tiny", text_dim=32, freq_dim=32, text_len=16), num_layers=layers)
    return WanDiT(cfg, rngs=nnx.Rngs(0))


def _inputs(nc=6, nt=6, prompts=3):
    ks = jax.random.split(jax.random.PRNGKey(1), 4)
    ctx = jax.random.normal(ks[0], (1, nc, H, W, 16))
    tgt = jax.random.normal(ks[1], (1, nt, H, W, 16))
    text = jax.random.normal(ks[2], (1, prompts, 16, 32))
    layout = context.shot_layout([0, 0, 0, 1, 1, 1], shot_index=2, target_frames=nt)
    return ctx, tgt, text, layout


def test_target_velocity_is_slice_of_full_call():
    dit = _model()
    ctx, tgt, text, lay = _inputs()
    t = jnp.asarray([700.0])
    got = teacher.teacher_velocity(dit, ctx, tgt, t, text, frame_prompt=lay.frame_prompt,
                                   frame_pos=lay.frame_pos, frame_shot=lay.frame_shot, shot_theta=1 / 6)
    full = dit(jnp.concatenate([ctx, tgt], 1), t, text, frame_prompt=lay.frame_prompt,
               frame_pos=lay.frame_pos, frame_shot=lay.frame_shot, shot_theta=1 / 6)
    assert got.shape == tgt.shape
    np.testing.assert_allclose(got, full[:, 6:], rtol=1e-6, atol=1e-6)


def test_context_frames_get_the_targets_timestep():
    """Reference (model/flow_matching.py, Teacher_Ode_Sample.py): the teacher is called with ONE timestep
    for FrameConcat(context, target), so the clean context frames are fed at the target's t, not at
    t=0. Written per frame: t_f = t for every f; the t=0-context alternative must differ."""
    dit = _model()
    ctx, tgt, text, lay = _inputs()
    kw = dict(frame_prompt=lay.frame_prompt, frame_pos=lay.frame_pos, frame_shot=lay.frame_shot, shot_theta=1 / 6)
    got = teacher.teacher_velocity(dit, ctx, tgt, jnp.asarray([700.0]), text, **kw)
    x = jnp.concatenate([ctx, tgt], 1)
    per_frame_t = jnp.full((1, 12), 700.0)
    np.testing.assert_allclose(got, dit(x, per_frame_t, text, **kw)[:, 6:], rtol=1e-5, atol=1e-5)
    ctx_at_zero = per_frame_t.at[:, :6].set(0.0)
    assert np.abs(np.asarray(got - dit(x, ctx_at_zero, text, **kw)[:, 6:])).max() > 1e-3


def test_multi_caption_routing_single_layer():
    """With one block, self-attention precedes cross-attention, so a frame's output depends on
    the prompts only through its own cross-attention: frames routed to prompt p must equal the
    single-prompt (prompt p for all frames) call on those frames."""
    dit = _model(layers=1)
    ctx, tgt, text, lay = _inputs()
    x = jnp.concatenate([ctx, tgt], 1)
    t = jnp.asarray([400.0])
    kw = dict(frame_pos=lay.frame_pos, frame_shot=lay.frame_shot, shot_theta=1 / 6)
    routed = dit(x, t, text, frame_prompt=lay.frame_prompt, **kw)
    for p in range(3):
        single = dit(x, t, text[:, p], **kw)
        sel = np.asarray(lay.frame_prompt) == p
        np.testing.assert_allclose(routed[:, sel], single[:, sel], rtol=1e-5, atol=1e-5)
    # Changing shot 0's prompt changes only shot 0's frames.
    text2 = text.at[:, 0].set(jax.random.normal(jax.random.PRNGKey(9), text[:, 0].shape))
    routed2 = dit(x, t, text2, frame_prompt=lay.frame_prompt, **kw)
    diff = np.abs(np.asarray(routed2 - routed)).max(axis=(0, 2, 3, 4))
    assert (diff[np.asarray(lay.frame_prompt) == 0] > 1e-4).all()
    np.testing.assert_allclose(diff[np.asarray(lay.frame_prompt) != 0], 0, atol=1e-6)


@pytest.mark.parametrize("foreground", [0.0, 2.0])
def test_teacher_loss_formula(foreground):
    """Reference: the loss written out with the same key split, t, noise and weight; with a
    foreground weight, each latent pixel's error weighted by 1 + 2 d^2 / mean(d^2) in numpy."""
    dit = _model()
    ctx, tgt, text, lay = _inputs()
    key = jax.random.PRNGKey(5)
    loss, aux = teacher.teacher_loss(dit, key, ctx, tgt, text, frame_prompt=lay.frame_prompt,
                                     frame_pos=lay.frame_pos, frame_shot=lay.frame_shot, shot_theta=1 / 6,
                                     foreground_weight=foreground)
    k_t, k_eps = jax.random.split(key)
    t = schedule.sample_training_timesteps(k_t, (1,))
    eps = jax.random.normal(k_eps, tgt.shape)
    s = float(schedule.sigma_of(t)[0])
    full = dit(jnp.concatenate([ctx, (1 - s) * tgt + s * eps], 1), t, text, frame_prompt=lay.frame_prompt,
               frame_pos=lay.frame_pos, frame_shot=lay.frame_shot, shot_theta=1 / 6)[:, 6:]
    idx = int(np.argmin(np.abs(schedule.timesteps() - float(t[0]))))
    err = (np.asarray(full) - np.asarray(eps - tgt)) ** 2
    x = np.asarray(tgt)
    w = np.ones(x.shape[:-1] + (1,))
    for f in range(x.shape[1]):
        d2 = ((x[0, f] - np.median(x[0, f].reshape(-1, x.shape[-1]), axis=0)) ** 2).sum(-1, keepdims=True)
        w[0, f] += foreground * d2 / d2.mean()
    want = (err * w).sum() / (w.sum() * x.shape[-1]) * schedule.training_weights()[idx]
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert aux["t"].shape == (1,)


def test_cfg_sampler_two_steps_by_hand():
    """Reference: two Euler steps with CFG written out with teacher_velocity calls."""
    dit = _model()
    ctx, tgt, text, lay = _inputs()
    tkv, null = dit.encode_text(text), dit.encode_text(text[:, 2] * 0)
    noise = jax.random.normal(jax.random.PRNGKey(3), tgt.shape)
    x0, saved = teacher.sample(dit, ctx, noise, tkv, null, lay, guidance=6.0, num_steps=2, shot_theta=1 / 6,
                               save_steps=(0, 1))
    ts, ss = schedule.teacher_timesteps(2)
    kw = dict(frame_pos=lay.frame_pos, frame_shot=lay.frame_shot, shot_theta=1 / 6)
    x = noise
    for i in range(2):
        np.testing.assert_allclose(saved[i], x, rtol=1e-5, atol=1e-5)
        t = jnp.full((1,), ts[i])
        vc = teacher.teacher_velocity(dit, ctx, x, t, text_kv=tkv, frame_prompt=lay.frame_prompt, **kw)
        vu = teacher.teacher_velocity(dit, ctx, x, t, text_kv=null, **kw)
        x = x + (vu + 6.0 * (vc - vu)) * (ss[i + 1] - ss[i])
    np.testing.assert_allclose(x0, x, rtol=1e-4, atol=1e-4)
