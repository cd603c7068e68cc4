"""Gradient accumulation vs the gradient of the whole batch (jax.value_and_grad of the batch-mean loss)."""
import jax
import jax.numpy as jnp
import numpy as np

from shotstream_jax.train import stages


def test_accumulated_grad_equals_full_batch_grad():
    w = {"a": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array(0.3)}
    batch = {"x": jnp.arange(24, dtype=jnp.float32).reshape(8, 3) / 10, "y": jnp.linspace(-1, 1, 8)}

    def loss_fn(w, batch, key):  # key unused: the micro-batches must add up to the full batch exactly
        err = batch["x"] @ w["a"] + w["b"] - batch["y"]
        return jnp.mean(err ** 2), {"max_err": jnp.max(jnp.abs(err))}

    key = jax.random.PRNGKey(0)
    (ref_loss, _), ref_grads = jax.value_and_grad(loss_fn, has_aux=True)(w, batch, key)
    for steps in (1, 2, 4):
        (loss, aux), grads = stages.accumulated_grad(loss_fn, w, batch, key, steps)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
        for k in w:
            np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-5, atol=1e-7)
        assert aux["max_err"].shape == ()
