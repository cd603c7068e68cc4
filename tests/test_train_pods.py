"""Pod helpers vs written-out expectations: gradient accumulation (reference: jax.value_and_grad of the
batch-mean loss) and when a job counts as multi-process (reference: the launch environments spelled out)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shotstream_jax import sharding
from shotstream_jax.train import stages


def test_accumulated_grad_equals_full_batch_grad():
    w = {"a": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array(0.3)}
    batch = {"x": jnp.arange(24, dtype=jnp.float32).reshape(8, 3) / 10, "y": jnp.linspace(-1, 1, 8)}

    def loss_fn(w, batch, key):  # key unused: the micro-batches must add up to the full batch exactly
        err = batch["x"] @ w["a"] + w["b"] - batch["y"]
        return jnp.mean(err ** 2), ({"max_err": jnp.max(jnp.abs(err))}, err)

    key = jax.random.PRNGKey(0)
    (ref_loss, (_, ref_err)), ref_grads = jax.value_and_grad(loss_fn, has_aux=True)(w, batch, key)
    for steps in (1, 2, 4):
        (loss, (aux, err)), grads = stages.accumulated_grad(loss_fn, w, batch, key, steps)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
        for k in w:
            np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-5, atol=1e-7)
        assert aux["max_err"].shape == ()
        np.testing.assert_allclose(err, ref_err, rtol=1e-6)  # per-example outputs back in batch order


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"},
     {"num_processes": 4, "process_id": 2}),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, None),          # the batch script itself: one process
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "4"}, {}),     # srun's tasks: JAX reads SLURM
    ({"OMPI_COMM_WORLD_SIZE": "2"}, {}),
    ({"JAX_PLATFORMS": "tpu"}, {}),                             # TPU VM: JAX reads the pod metadata
])
def test_distributed_env(monkeypatch, env, expected):
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID", "SLURM_NTASKS",
              "SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE", "JAX_PLATFORMS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert sharding.distributed_env() == expected


def test_coordinator_without_process_ids_is_an_error(monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "h:1234")
    for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES and JAX_PROCESS_ID"):
        sharding.distributed_env()


def test_hosts_cut_their_rows_to_the_global_shortest(monkeypatch):
    """Reference: the rule written out: two hosts whose rows were cut to 6 and 3 latent frames both keep 3."""
    from jax.experimental import multihost_utils
    from shotstream_jax.train import loop

    host = {"target": np.zeros((2, 6, 2, 2, 4), np.float32), "target_frames": np.array([6, 9], np.int32),
            "ode": np.zeros((2, 5, 6, 2, 2, 4), np.float32), "text": np.zeros((2, 3, 8), np.float32)}
    assert loop.same_length_on_every_host(host) is host  # one process: nothing to agree on
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda x: np.stack([x, np.int32(3)]))
    out = loop.same_length_on_every_host(host)
    assert out["target"].shape[1] == 3 and out["ode"].shape[2] == 3 and out["text"].shape == (2, 3, 8)
