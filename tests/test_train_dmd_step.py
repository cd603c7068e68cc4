"""The DMD generator step's loss and gradient against the formula of model/dmd_frameconcat.py written out by hand.

By hand: x = rollout(theta), g = (fake_x0 - real_x0) / mean|x - real_x0| (real
with CFG cond + 3 (cond - uncond)), dL/dx = g / x.size, dL/dtheta = J^T dL/dx.
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


def test_generator_step_gradient_by_hand(tmp_path):
    cfg = small("dmd_intra", steps=1, batch_size=1)
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
    k_roll, k_dmd = jax.random.split(jax.random.split(jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed), 0), 1)[0])
    x, vjp = jax.vjp(lambda p: stages.rollout(cfg, stage.gen.module(p, state["gen_frozen"]), ex, k_roll), trained)
    k_t, k_eps = jax.random.split(k_dmd)
    t = jnp.clip(jnp.asarray(schedule.timesteps())[jax.random.randint(k_t, (), 0, 1000)], 20.0, 980.0)
    s = schedule.sigma_of(t)
    xt = (1 - s) * x + s * jax.random.normal(k_eps, x.shape)
    real_cfg, _, _ = stages.teacher_x0_fns(cfg, nnx.merge(stage.critic.full_graphdef, consts["real"]), ex,
                                           consts["uncond"], 3.0)
    _, fake_x0, _ = stages.teacher_x0_fns(cfg, nnx.merge(stage.critic.full_graphdef, state["critic"]), ex,
                                          consts["uncond"], 0.0)
    real, fake, xn = (np.asarray(a, np.float64) for a in (real_cfg(xt, t), fake_x0(xt, t), x))
    g = (fake - real) / np.mean(np.abs(xn - real))
    (grads,) = vjp(jnp.asarray(g / g.size, jnp.float32))
    np.testing.assert_allclose(float(m["generator_loss"]), 0.5 * np.mean(g ** 2), rtol=1e-3)
    np.testing.assert_allclose(float(m["grad_norm"]), float(optax.global_norm(grads)), rtol=1e-3)
    # The exit-step gradient reaches the text path too (cross-attention K/V and the text embedding).
    flat = {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(grads)}
    text_path = [n for n in flat if ("cross_attn" in n and "'k'" in n) or "text_embedding" in n]
    assert text_path and all(float(jnp.abs(flat[n]).max()) > 0 for n in text_path), list(flat)[:8]
