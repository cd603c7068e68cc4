"""Schedule checks against formulas written out by hand and the torch FlowMatchScheduler recipe."""
import jax
import jax.numpy as jnp
import numpy as np
import torch

from shotstream_jax import schedule


def _shift(s, k=8.0):
    return k * s / (1 + (k - 1) * s)


def test_student_timesteps_by_hand():
    # table[i] = 1000 * shift(1 - i/1000); steps [1000, 740, 500, 260] -> i = 0, 260, 500, 740.
    want = [1000 * _shift(1 - i / 1000) for i in (0, 260, 500, 740)]
    np.testing.assert_allclose(schedule.student_timesteps(), want, rtol=1e-6)
    np.testing.assert_allclose(schedule.student_timesteps(), [1000, 957.9288, 888.8889, 737.5886], atol=1e-3)


def test_tables_match_torch_recipe():
    """Reference: torch.linspace(1, 0, n + 1)[:-1] shifted, as utils/scheduler.py builds it."""
    for n in (1000, 50):
        s = torch.linspace(1, 0, n + 1)[:-1]
        np.testing.assert_allclose(schedule.sigmas(n), (8 * s / (1 + 7 * s)).numpy(), atol=2e-7)
    ts, ss = schedule.teacher_timesteps(50)
    assert ts.shape == (50,) and ss.shape == (51,) and ss[-1] == 0 and ts[0] == 1000


def test_training_weights_formula():
    t = schedule.timesteps().astype(np.float64)
    y = np.exp(-2 * ((t - 500) / 1000) ** 2)
    y -= y.min()
    np.testing.assert_allclose(schedule.training_weights(), y * 1000 / y.sum(), rtol=1e-5)


def test_add_noise_and_x0_round_trip():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    x0 = jax.random.normal(k1, (2, 3, 4, 4, 16))
    eps = jax.random.normal(k2, x0.shape)
    t = jnp.asarray([[957.9288] * 3, [500.0] * 3])  # per frame
    xt = schedule.add_noise(x0, eps, t)
    s = np.asarray(schedule.sigma_of(t))[:, :, None, None, None]
    np.testing.assert_allclose(xt, (1 - s) * x0 + s * eps, rtol=1e-6, atol=1e-6)
    v = schedule.velocity_target(x0, eps)
    np.testing.assert_allclose(schedule.x0_from_velocity(xt, v, t), x0, atol=1e-5)
    # sigma of a table timestep is that entry's sigma, i.e. t / 1000.
    np.testing.assert_allclose(schedule.sigma_of(jnp.asarray(schedule.student_timesteps())),
                               schedule.student_timesteps() / 1000, rtol=1e-6)


def test_training_timestep_sampling():
    t = schedule.sample_training_timesteps(jax.random.PRNGKey(1), (4000,))
    table = set(schedule.timesteps().tolist())
    assert all(float(x) in table for x in np.asarray(t)[:50])
    tc = schedule.sample_training_timesteps(jax.random.PRNGKey(1), (4000,), clamp=(20, 980))
    assert float(tc.min()) >= 20 and float(tc.max()) <= 980 and float(tc.max()) == 980


def test_euler_sample_exact_for_straight_flow():
    """For x_t = (1-s) x0 + s eps the true velocity eps - x0 is constant: Euler lands on x0."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(2))
    x0 = jax.random.normal(k1, (1, 2, 4, 4, 16))
    eps = jax.random.normal(k2, x0.shape)
    out = schedule.euler_sample(lambda x, t: eps - x0, eps, num_steps=50)
    np.testing.assert_allclose(out, x0, atol=1e-5)
