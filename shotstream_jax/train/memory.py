"""Per-chip memory of a training step, from abstract evaluation (nothing is allocated or compiled).

    parameters   every network the step holds (trained, frozen, critic, teacher), per chip after sharding
    optimiser    the optax states (AdamW: two moments per trained parameter)
    gradients    the largest trained set of one update (generator or critic), sharded like its parameters
    activations  the residuals the backward pass keeps (`saved_residuals` of the loss: after remat, what
                 the policy saves), for the examples one chip processes at once, split over `context`

The figures are lower bounds of what XLA allocates (temporaries inside a
block, fragmentation and collective buffers come on top); `shotstream-train
--dry_run` prints them for a config and mesh.
"""
from __future__ import annotations

import math
import jax
import numpy as np
from jax._src.ad_checkpoint import saved_residuals
from flax import nnx
from jax.sharding import AbstractMesh

from shotstream_jax import model_dir, sharding
from shotstream_jax.models.wan_vae import WanVAE
from shotstream_jax.train import stages

GB = 1e9


def _bytes(tree, shardings=None) -> int:
    """Bytes per chip of a pytree of ShapeDtypeStructs (sharded by `shardings` when given)."""
    leaves = jax.tree.leaves(tree)
    shs = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)) if shardings else None
    total = 0
    for i, a in enumerate(leaves):
        shape = shs[i].shard_shape(a.shape) if shs else a.shape
        total += math.prod(shape) * np.dtype(a.dtype).itemsize
    return total


def _example(cfg) -> dict:
    """ShapeDtypeStructs of one training example (data/pipeline.py layout; ode_init adds the ODE states)."""
    m, s = cfg.model, cfg.shotstream
    sf = model_dir.encoder_vae_config(cfg).spatial_factor
    h, w = cfg.video.height // sf, cfg.video.width // sf
    f32, i32 = np.float32, np.int32
    ex = dict(context=((s.context_frames, h, w, m.in_channels), f32), context_shot=((s.context_frames,), i32),
              target=((s.shot_latent_frames, h, w, m.in_channels), f32), target_shot=((), i32),
              text=((cfg.data.max_shots, m.text_len, m.text_dim), f32), num_shots=((), i32))
    if cfg.stage == "ode_init":
        ex["ode"] = ((len(s.denoising_steps), s.shot_latent_frames, h, w, m.in_channels), f32)
    return {k: jax.ShapeDtypeStruct(shape, dt) for k, (shape, dt) in ex.items()}


def _updates(stage, state, consts, batch) -> list[tuple[str, list]]:
    """(trained net, saved residuals of its loss) of each update the step makes, from `Stage._grad`.

    Residuals are read while the step traces (the loss closes over the
    step's other inputs); those that are inputs themselves are dropped
    (parameters are counted as parameters). A DMD step traces both its
    generator and its critic branch.
    """
    found = []
    grad = stage._grad

    def capture(net, loss_fn, params, batch_, key, steps):
        res = saved_residuals(loss_fn, params, batch_, key)
        found.append((net, [a for a, why in res if not why.startswith(("from the argument", "from a constant"))]))
        return grad(net, loss_fn, params, batch_, key, steps)

    stage._grad = capture
    try:
        jax.eval_shape(stage.step, state, consts, batch)
    finally:
        del stage._grad
    return found


def estimate(cfg, chips: int | None = None) -> dict:
    """Bytes per chip: parameters, optimiser, gradients, activations, total; and the mesh it assumed."""
    shape = tuple(int(cfg.mesh.get(a, 1)) for a in sharding.AXES)
    chips = chips or jax.device_count()
    if math.prod(shape) != chips:
        raise ValueError(f"mesh {dict(zip(sharding.AXES, shape))} has {math.prod(shape)} chips, not {chips}; "
                         "set --config.mesh.* to multiply to the chip count")
    mesh = AbstractMesh(shape, sharding.AXES)
    stage = stages.STAGES[cfg.stage](cfg, mesh)
    abstract, state_sh = stage.abstract_state()
    nets = [k for k in ("gen", "gen_frozen", "critic", "critic_frozen") if k in abstract]
    params = _bytes({k: abstract[k] for k in nets}, {k: state_sh[k] for k in nets})
    opt = _bytes({k: abstract[k] for k in ("gen_opt", "critic_opt") if k in abstract},
                 {k: state_sh[k] for k in ("gen_opt", "critic_opt") if k in abstract})
    consts = {}
    if isinstance(stage, stages.DmdStage):
        # The teacher (real score) is a full net sharded like the critic's base weights.
        real = "critic_frozen" if stage.critic.kind == "lora" else "critic"
        params += _bytes(abstract[real], state_sh[real])
        consts = {"real": abstract[real],
                  "uncond": jax.ShapeDtypeStruct((cfg.model.text_len, cfg.model.text_dim), np.float32)}
    if isinstance(stage, stages.DmdInterStage):
        # The VAE that decodes and re-encodes the generated shots, replicated as `vae_params` puts it.
        vae = nnx.eval_shape(lambda: WanVAE(model_dir.encoder_vae_config(cfg), rngs=nnx.Rngs(0)))
        stage.vae_graphdef, vae_state = nnx.split(vae, nnx.Param)
        consts["vae"] = vae_state.to_pure_dict()
        params += _bytes(consts["vae"])
    per_chip = max(1, cfg.train.batch_size // sharding.batch_shards(mesh) // cfg.train.get("grad_accum", 1))
    batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct((per_chip,) + a.shape, a.dtype), _example(cfg))
    grads, acts = 0, 0
    for net, res in _updates(stage, abstract, consts, batch):
        grads = max(grads, _bytes(abstract[net], state_sh[net]))
        acts = max(acts, sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in res))
    acts //= mesh.shape["context"]
    return {"parameters": params, "optimiser": opt, "gradients": grads, "activations": acts,
            "total": params + opt + grads + acts, "mesh": dict(zip(sharding.AXES, shape)),
            "examples_per_chip": per_chip}


def report(cfg, chips: int | None = None) -> str:
    e = estimate(cfg, chips)
    mesh = " x ".join(f"{k}={v}" for k, v in e["mesh"].items())
    lines = [f"{cfg.size} {cfg.stage}: per-chip memory on mesh {mesh}, {e['examples_per_chip']} example(s) per chip"]
    lines += [f"  {k:<12} {e[k] / GB:8.2f} GB" for k in ("parameters", "optimiser", "gradients", "activations",
                                                         "total")]
    return "\n".join(lines)
