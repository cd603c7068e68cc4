"""The DMD generator step against model/dmd_frameconcat.py written out by hand from raw WanDiT calls.

By hand, in this test: the exit-step rollout x = G(theta) (the stage's rollout), t and eps drawn as the
reference (t = table[randint(0, 1000)] clamped to [20, 980]), x_t = (1 - s) x + s eps; the real score is
the teacher called directly on FrameConcat(context, x_t) with CFG 4 on the velocity
(cond + 3 (cond - uncond), uncond = the negative prompt on every frame), the fake score the critic called
the same way without CFG, x0 = x_t - s v; g = (fake - real) / mean|x - real|, L = 0.5 mean(g^2),
dL/dtheta = J^T (g / x.size). Context dropout decided with the step's own key, as the stage draws it.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from shotstream_jax import schedule, sharding
from shotstream_jax.data import pipeline
from shotstream_jax.train import stages
from tests.test_train_stages import small


def _x0_by_hand(dit, ex, xt, t, text, frame_prompt):
    """One raw WanDiT call over [context, x_t] at ONE t for every frame; x0 = x_t - s v on the target."""
    fc, tf = ex["context"].shape[0], xt.shape[0]
    shots = np.asarray(ex["context_shot"])
    frame_shot = np.concatenate([shots, np.full(tf, shots[-1] + 1)])
    v = dit(jnp.concatenate([ex["context"], xt])[None], jnp.full((1,), t), text[None], frame_prompt=frame_prompt,
            frame_pos=np.arange(fc + tf), frame_shot=frame_shot, shot_theta=1.0 / 6.0)[0, fc:]
    s = schedule.sigmas()[int(np.argmin(np.abs(schedule.timesteps() - t)))]
    return np.asarray(xt - s * v, np.float64), np.asarray(v, np.float64)


def test_generator_step_gradient_by_hand(tmp_path):
    cfg = small("dmd_intra", steps=1, batch_size=1)
    assert cfg.train.context_dropout == 0.1 and cfg.train.guidance_scale == 3.0
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    stage = stages.DmdStage(cfg, mesh)
    state, sh = stage.init_state()
    consts = stage.init_consts()
    batch = next(iter(pipeline.dataset(pipeline.source(cfg, str(tmp_path)), 1, seed=0)))
    trained = jax.tree.map(jnp.copy, state["gen"])
    step = stage.compile(sh, consts, batch)
    _, m = step(jax.tree.map(jnp.copy, state), consts, sharding.shard_batch(mesh, batch))
    assert int(m["is_generator_step"]) == 1

    ex = {k: jnp.asarray(v[0]) for k, v in batch.items()}
    k = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed), 0), 1)[0]
    k_roll, k_dmd = jax.random.split(k)
    k_drop, k_rollout = jax.random.split(k_roll)
    if float(jax.random.uniform(k_drop)) < 0.1:
        ex = dict(ex, context=jnp.zeros_like(ex["context"]), context_shot=jnp.zeros_like(ex["context_shot"]))
    x, vjp = jax.vjp(lambda p: stages.rollout(cfg, stage.gen.module(p, state["gen_frozen"]), ex, k_rollout), trained)
    k_t, k_eps = jax.random.split(k_dmd)
    t = float(np.clip(schedule.timesteps()[int(jax.random.randint(k_t, (), 0, 1000))], 20.0, 980.0))
    s = schedule.sigmas()[int(np.argmin(np.abs(schedule.timesteps() - t)))]
    xt = (1 - s) * x + s * jax.random.normal(k_eps, x.shape)

    teacher = nnx.merge(stage.critic.full_graphdef, consts["real"])
    critic = nnx.merge(stage.critic.full_graphdef, state["critic"])
    tf = x.shape[0]
    prompts = np.concatenate([np.asarray(ex["context_shot"]), np.full(tf, int(ex["target_shot"]))])
    _, v_cond = _x0_by_hand(teacher, ex, xt, t, ex["text"], prompts)
    _, v_uncond = _x0_by_hand(teacher, ex, xt, t, consts["uncond"], None)
    real = np.asarray(xt, np.float64) - s * (v_cond + 3.0 * (v_cond - v_uncond))
    fake, _ = _x0_by_hand(critic, ex, xt, t, ex["text"], prompts)
    xn = np.asarray(x, np.float64)
    g = (fake - real) / np.mean(np.abs(xn - real))
    (grads,) = vjp(jnp.asarray(g / g.size, jnp.float32))
    np.testing.assert_allclose(float(m["generator_loss"]), 0.5 * np.mean(g ** 2), rtol=1e-3)
    np.testing.assert_allclose(float(m["grad_norm"]), float(optax.global_norm(grads)), rtol=1e-3)
    # The exit-step gradient reaches the text path too (cross-attention K/V and the text embedding).
    flat = {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(grads)}
    text_path = [n for n in flat if ("cross_attn" in n and "'k'" in n) or "text_embedding" in n]
    assert text_path and all(float(jnp.abs(flat[n]).max()) > 0 for n in text_path), list(flat)[:8]
