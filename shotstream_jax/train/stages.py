"""The training stages as jitted, sharded step functions over explicit state pytrees.

A stage owns:
  state   checkpointed pytree: {'step', 'gen', 'gen_frozen', 'gen_opt'[, 'critic', 'critic_frozen', 'critic_opt']}
          (pure parameter dicts of the trained networks and their optax states);
  consts  frozen inputs re-made on resume: the teacher's parameters (real score),
          the unconditional text embedding (and in dmd_inter the VAE);
and `step(state, consts, batch) -> (state, metrics)`, compiled once per length
bucket of the batches. The RNG of update s (state['step']) is fold_in(seed, s),
so a resumed run draws the same numbers.

Networks:
  teacher    bidirectional next-shot DiT over FrameConcat(context, target) (models/teacher.py);
  generator  the causal student (models/student.py): Self-Forcing rollouts with
             the dual KV cache for DMD, the block-causal full-sequence pass for ODE init;
  critic     fake score, initialised from the teacher (LoRA over it in dmd_inter).
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from shotstream_jax import context as context_lib
from shotstream_jax import checkpoint, model_dir, schedule, sharding
from shotstream_jax.data import pipeline
from shotstream_jax.models import student as student_lib
from shotstream_jax.models import teacher as teacher_lib
from shotstream_jax.models.wan_dit import WanDiT, WanDiTConfig
from shotstream_jax.train import lora as lora_lib
from shotstream_jax.train import losses

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ networks


def dit_config(cfg) -> WanDiTConfig:
    return WanDiTConfig.from_dict(cfg.model)


def _trainable_filter(kind: str):
    if kind == "self_attn":
        return nnx.All(nnx.Param, nnx.PathContains("self_attn"))
    if kind in ("all", "lora"):
        return nnx.Param
    raise ValueError(f"train.trainable={kind!r}; use all, self_attn or lora")


class Net:
    """Graph definition and the split of a WanDiT's parameters into trained and frozen pure dicts."""

    def __init__(self, cfg, trainable: str):
        self.dit_cfg = dit_config(cfg)
        abstract = nnx.eval_shape(lambda: WanDiT(self.dit_cfg, rngs=nnx.Rngs(0)))
        self.kind = trainable
        # LoRA trains adapters beside the model: every model parameter is frozen.
        self.filter = nnx.Nothing if trainable == "lora" else _trainable_filter(trainable)
        self.graphdef, train_abs, frozen_abs = nnx.split(abstract, self.filter, ...)
        self.full_graphdef = nnx.split(abstract, nnx.Param)[0]
        names = sharding.logical_names(abstract)
        self.names = {"train": _subset(names, train_abs.to_pure_dict()),
                      "frozen": _subset(names, frozen_abs.to_pure_dict()),
                      "all": names}
        self.lora_scale = float(cfg.train.lora_alpha) / float(cfg.train.lora_rank)

    def split(self, params: dict) -> tuple[dict, dict]:
        """All parameters -> (trained, frozen) pure dicts."""
        _, a, b = nnx.split(nnx.merge(self.full_graphdef, params), self.filter, ...)
        return a.to_pure_dict(), b.to_pure_dict()

    def module(self, trained: dict, frozen: dict) -> WanDiT:
        if self.kind == "lora":
            return nnx.merge(self.full_graphdef, lora_lib.merge(frozen, trained, self.lora_scale))
        return nnx.merge(self.graphdef, trained, frozen)


def _subset(tree: dict, like: dict) -> dict:
    return {k: _subset(tree[k], v) if isinstance(v, dict) else tree[k] for k, v in like.items()}


def dit_params(cfg, mesh, path: str, seed: int) -> dict:
    """All DiT parameters (pure dict) on the mesh, each array created directly in its shards.

    Restored from the model directory `path` (written by shotstream-convert or a
    previous stage's export/), or initialised from `seed` when `path` is empty.
    """
    abstract = nnx.eval_shape(lambda: WanDiT(dit_config(cfg), rngs=nnx.Rngs(0)))
    shapes = nnx.state(abstract, nnx.Param).to_pure_dict()
    sh = sharding.tree_shardings(mesh, sharding.logical_names(abstract), shapes)
    if not path:
        return jax.jit(lambda: nnx.state(WanDiT(dit_config(cfg), rngs=nnx.Rngs(seed)), nnx.Param).to_pure_dict(),
                       out_shardings=sh)()
    ckpt = checkpoint.as_path(path) / "dit"
    if not ckpt.is_dir():
        raise FileNotFoundError(f"{path}: not a model directory (no dit/); convert weights with shotstream-convert "
                                f"or point at a previous stage's WORKDIR/export")
    model_dir.check_dit(str(path), dit_config(cfg))
    target = jax.tree.map(lambda a, d: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=d), shapes, sh)
    with ocp.StandardCheckpointer() as ckptr:
        try:
            return ckptr.restore(ckpt, target)
        except (ValueError, KeyError) as e:
            raise ValueError(f"{path}: parameters do not match the config's model section ({e})") from e


def lr_schedule(cfg, lr: float):
    """Linear warmup over train.warmup_steps, then constant, or (train.lr_decay="cosine") a cosine
    down to a tenth of `lr` at train.steps."""
    t = cfg.train
    if t.lr_decay == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, t.warmup_steps, max(t.steps, t.warmup_steps + 1),
                                                  end_value=0.1 * lr)
    if t.lr_decay != "none":
        raise ValueError(f"train.lr_decay must be 'none' or 'cosine', got {t.lr_decay!r}")
    return optax.linear_schedule(0.0, lr, t.warmup_steps) if t.warmup_steps else lr


def optimizer(cfg, lr: float, clip: float) -> optax.GradientTransformation:
    t = cfg.train
    lr_sched = lr_schedule(cfg, lr)
    return optax.chain(optax.clip_by_global_norm(clip),
                       optax.adamw(lr_sched, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay))


# ------------------------------------------------------------------ per-example layouts


def _frame_prompt(fc: int, t: int) -> np.ndarray:
    """Static prompt slot per frame: context frame i -> slot i, target frames -> slot fc."""
    return np.concatenate([np.arange(fc), np.full(t, fc)]).astype(np.int32)


def _text_slots(ex) -> jax.Array:
    """Prompts of the context frames' shots and the target shot: [Fc + 1, L, Dt]."""
    return ex["text"][jnp.concatenate([ex["context_shot"], ex["target_shot"][None]])]


def _rope_shots(context_shot: jax.Array, t: int) -> jax.Array:
    """RoPE shot index per frame: context frames their shot, the target last context shot + 1."""
    return jnp.concatenate([context_shot, jnp.full((t,), context_shot[-1] + 1, jnp.int32)])


def drop_context(ex, key: jax.Array, rate: float):
    """The reference's context dropout: with probability `rate` the context latents become
    zeros and every context frame RoPE shot 0 (so the target sits in shot 1)."""
    drop = jax.random.uniform(key) < rate
    return dict(ex, context=jnp.where(drop, 0.0, ex["context"]), context_shot=jnp.where(drop, 0, ex["context_shot"]))


def _last_context_frame(ex, key: jax.Array, rate: float, frame: jax.Array):
    """With probability `rate`, `ex` with `frame` as its last context frame (RoPE shot and prompt stay the context's)."""
    use = jax.random.uniform(key) < rate
    context = jnp.asarray(ex["context"])
    return dict(ex, context=context.at[-1].set(jnp.where(use, frame, context[-1])))


def copy_frame(ex, key: jax.Array, rate: float):
    """Not in the recipe: with probability `rate` the last context frame becomes the target's own first
    latent frame. A curriculum for in-context copying: the target can then be read off the context,
    which a teacher that explains its target from the prompt and the noise alone never has to learn
    (benchmarks/RESULTS.md, "After the ninth run"). It teaches going on from that frame, not a cut."""
    return _last_context_frame(ex, key, rate, ex["target"][0])


def cue_frame(ex, key: jax.Array, rate: float, level: int):
    """Not in the recipe: with probability `rate` the last context frame becomes the example's cue frame of
    `level` (data/shapes_cues.py: the target's character on the context shot's background, moved further
    from the target's first position at each level). A curriculum whose shortcut is the character, not
    the frame: copying the cue's background would break the cut."""
    if "cue" not in ex:
        raise ValueError("train.cue_frame needs examples with cue frames: add them to data.latents_dir with "
                         "python -m shotstream_jax.data.shapes_cues")
    levels = ex["cue"].shape[0]
    if not 0 <= level < levels:
        raise ValueError(f"cue level {level}: the examples have cue levels 0..{levels - 1}")
    return _last_context_frame(ex, key, rate, ex["cue"][level])


def random_copy(ex, key: jax.Array, rate: float, patch: int = 0):
    """Not in the recipe: with probability `rate` the example becomes a copy task on noise. A warm start for
    in-context reading; prompts, RoPE shots and the noise level stay the example's. Context dropout still
    applies after it, and a dropped context leaves nothing to copy: the runs used context_dropout=0.

    patch 0: every context frame is Gaussian noise and every target frame is the last context frame. Nothing
    but the context predicts such a target, so the net has to route content from context tokens to target
    tokens; on random frames a fresh DiT of the teacher's size finds that route within about 10000 examples,
    where the Shapes data alone never made it (benchmarks/RESULTS.md, "Memory from scratch on a CPU").
    patch n > 0: the last context frame is one random colour (a constant latent) with a square of noise, 1 to
    n latent pixels a side, somewhere in it; every target frame is zeros with that square at the same place.
    Only the part that stands out of its frame is to be copied, as a character is, not its background.
    On a CPU the whole-frame copy was learned and then carried into the cue training as the frame shortcut;
    the square was not learned in 1500 steps (RESULTS, "A warm start on noise").
    """
    k_use, k_frames, k_bg, k_side, k_y, k_x = jax.random.split(key, 6)
    use = jax.random.uniform(k_use) < rate
    context = jnp.asarray(ex["context"])
    frames = jax.random.normal(k_frames, context.shape, context.dtype)
    target = frames[-1]
    if patch:
        h, w = context.shape[1:3]
        side = jax.random.randint(k_side, (), 1, patch + 1)
        y0 = jax.random.randint(k_y, (), 0, h - side + 1)
        x0 = jax.random.randint(k_x, (), 0, w - side + 1)
        ys, xs = jnp.arange(h)[:, None, None], jnp.arange(w)[None, :, None]
        inside = (ys >= y0) & (ys < y0 + side) & (xs >= x0) & (xs < x0 + side)
        background = jax.random.normal(k_bg, context.shape[-1:], context.dtype)
        frames = frames.at[-1].set(jnp.where(inside, frames[-1], background))
        target = jnp.where(inside, frames[-1], 0.0)
    target = jnp.broadcast_to(target, ex["target"].shape).astype(ex["target"].dtype)
    return dict(ex, context=jnp.where(use, frames, context), target=jnp.where(use, target, ex["target"]))


def drop_text(ex, key: jax.Array, rate: float):
    """Text dropout (for CFG): with probability `rate` every prompt embedding becomes zeros."""
    return dict(ex, text=jnp.where(jax.random.uniform(key) < rate, 0.0, ex["text"]))


def teacher_x0_fns(cfg, dit: WanDiT, ex, uncond: jax.Array, guidance: float):
    """Score functions of a bidirectional net (teacher or critic) on `ex`'s context, one t for all frames.

    Returns (x0 with CFG cond + guidance (cond - uncond), x0 without CFG,
    velocity without CFG), each (x [T, h, w, C], t f32[]) -> [T, h, w, C].
    """
    fc, t_frames = ex["context"].shape[0], ex["target"].shape[0]
    theta = context_lib.shot_theta(cfg.shotstream)
    kw = dict(frame_prompt=_frame_prompt(fc, t_frames), frame_pos=np.arange(fc + t_frames),
              frame_shot=_rope_shots(ex["context_shot"], t_frames), shot_theta=theta)
    text = _text_slots(ex)[None]
    null = jnp.broadcast_to(uncond, text.shape)
    shift = cfg.shotstream.timestep_shift

    def vel(x, t, txt):
        return teacher_lib.teacher_velocity(dit, ex["context"][None], x[None], jnp.reshape(t, (1,)), txt, **kw)[0]

    def cond_x0(x, t):
        return schedule.x0_from_velocity(x, vel(x, t, text), t, shift)

    def cfg_x0(x, t):
        c, u = vel(x, t, text), vel(x, t, null)
        return schedule.x0_from_velocity(x, c + guidance * (c - u), t, shift)

    return cfg_x0, cond_x0, lambda x, t: vel(x, t, text)


# ------------------------------------------------------------------ student (models/student.py)


def _student_layout(ex, target_frames: int) -> context_lib.ShotLayout:
    fc = ex["context"].shape[0]
    return context_lib.ShotLayout(jnp.arange(fc + target_frames), _rope_shots(ex["context_shot"], target_frames),
                                  jnp.asarray(_frame_prompt(fc, target_frames)))


def student_velocity(cfg, dit: WanDiT, ex, x: jax.Array, t: jax.Array) -> jax.Array:
    """Block-causal pass of the student over context (t=0) + the whole shot (`full_sequence_velocity`).

    x [T, h, w, C], t f32[T] -> v [T, h, w, C].
    """
    v = student_lib.full_sequence_velocity(
        dit, ex["context"][None], x[None], t[None], dit.encode_text(_text_slots(ex)[None]),
        _student_layout(ex, x.shape[0]), shot_theta=context_lib.shot_theta(cfg.shotstream),
        chunk_frames=cfg.shotstream.chunk_frames)
    return v[0]


def rollout(cfg, dit: WanDiT, ex, key: jax.Array, grad: bool = True) -> jax.Array:
    """Self-Forcing rollout of the target shot with the dual cache (`student.rollout_shot`).

    The global cache is filled from the example's context at t=0; every chunk
    is denoised up to one exit step drawn here and shared by all chunks; only
    the exit-step predictions carry gradients, through the weights and the
    target prompt's text K/V (earlier steps and cache passes use
    stop_gradient(params)); `grad=False` when nothing differentiates the
    result (the exit passes are not run again). Returns x0 [T, h, w, C].
    """
    s = cfg.shotstream
    fc, shape = ex["context"].shape[0], ex["target"].shape
    theta = context_lib.shot_theta(s)
    ts = schedule.student_timesteps(s.denoising_steps, s.timestep_shift)
    k_exit, k_noise, k_steps = jax.random.split(key, 3)
    exit_step = jax.random.randint(k_exit, (), 0, len(ts))
    graphdef, state = nnx.split(dit)
    frozen = nnx.merge(graphdef, jax.lax.stop_gradient(state))
    cache = student_lib.init_cache(dit.cfg, 1, shape[1:3], context_frames=fc, shot_frames=shape[0])
    cache = student_lib.context_pass(frozen, cache, ex["context"][None], frozen.encode_text(_text_slots(ex)[None]),
                                     ex["context_shot"], frame_prompt=np.arange(fc), shot_theta=theta)
    target_kv = dit.encode_text(ex["text"][ex["target_shot"]][None])
    x, _, _, _ = student_lib.rollout_shot(
        graphdef, state, cache, jax.random.normal(k_noise, (1,) + shape, jnp.float32), k_steps, target_kv,
        ex["context_shot"][-1] + 1, exit_step, theta, ts, s.chunk_frames, grad)
    return x[0]


# ------------------------------------------------------------------ stages


class Stage:
    """Common state handling: init on the mesh, shardings, jitted steps."""

    two_nets = False

    def __init__(self, cfg, mesh):
        self.cfg, self.mesh = cfg, mesh
        self.gen = Net(cfg, cfg.train.trainable)
        self.tx = optimizer(cfg, cfg.train.lr, cfg.train.clip_norm)
        if self.two_nets:
            self.critic = Net(cfg, cfg.train.critic_trainable)
            self.tx_critic = optimizer(cfg, cfg.train.lr_critic, cfg.train.clip_norm_critic)

    # -- state

    def _init_state(self, gen_params, critic_params, key):
        cfg = self.cfg
        trained, frozen = self.gen.split(gen_params)
        if self.gen.kind == "lora":
            trained = lora_lib.init(frozen, cfg.train.lora_rank, key)
        state = {"step": jnp.zeros((), jnp.int32), "gen": trained, "gen_frozen": frozen,
                 "gen_opt": self.tx.init(trained)}
        if self.two_nets:
            critic, critic_frozen = self.critic.split(critic_params)
            if self.critic.kind == "lora":
                critic = lora_lib.init(critic_frozen, cfg.train.lora_rank, jax.random.fold_in(key, 1))
            state.update(critic=critic, critic_frozen=critic_frozen, critic_opt=self.tx_critic.init(critic))
        return state

    def teacher_params(self) -> dict:
        """Teacher parameters: train.teacher_dir, or (toy runs without one) a fresh net from seed + 1."""
        return dit_params(self.cfg, self.mesh, self.cfg.train.teacher_dir, self.cfg.train.seed + 1)

    def _names(self, abstract_state):
        n = {"step": ()}
        for net, key in ((self.gen, "gen"),) + (((self.critic, "critic"),) if self.two_nets else ()):
            n[key], n[key + "_frozen"] = net.names["train"], net.names["frozen"]
            if net.kind == "lora":
                n[key] = lora_lib.names(abstract_state[key], net.names["all"])
                n[key + "_frozen"] = net.names["all"]
        return n

    def state_shardings(self, abstract_state):
        mesh, names = self.mesh, self._names(abstract_state)
        rep = sharding.replicated(mesh)
        sh = {k: (rep if k == "step" else sharding.tree_shardings(mesh, names[k], abstract_state[k]))
              for k in names}
        sh["gen_opt"] = optax.tree_map_params(self.tx, lambda _, s: s, abstract_state["gen_opt"], sh["gen"],
                                              transform_non_params=lambda _: rep)
        if self.two_nets:
            sh["critic_opt"] = optax.tree_map_params(self.tx_critic, lambda _, s: s, abstract_state["critic_opt"],
                                                     sh["critic"], transform_non_params=lambda _: rep)
        return sh

    def _init_inputs(self):
        gen = dit_params(self.cfg, self.mesh, self.cfg.train.init_dir, self.cfg.train.seed)
        return gen, (self.teacher_params() if self.two_nets else None), jax.random.PRNGKey(self.cfg.train.seed)

    def init_state(self):
        """(state, shardings), built directly on the mesh: generator from train.init_dir, critic from the teacher."""
        inputs = self._init_inputs()
        sh = self.state_shardings(jax.eval_shape(self._init_state, *inputs))
        return jax.jit(self._init_state, out_shardings=sh)(*inputs), sh

    def abstract_state(self):
        """(ShapeDtypeStructs of the state, shardings), without creating or loading anything."""
        gen = jax.eval_shape(lambda: nnx.state(WanDiT(dit_config(self.cfg), rngs=nnx.Rngs(0)), nnx.Param)
                             .to_pure_dict())
        abstract = jax.eval_shape(self._init_state, gen, gen if self.two_nets else None, jax.random.PRNGKey(0))
        return abstract, self.state_shardings(abstract)

    def init_consts(self):
        return {}

    # -- steps

    def batch_shardings(self, batch):
        return {k: sharding.batch_sharding(self.mesh, np.ndim(v)) for k, v in batch.items()}

    def compile(self, state_sh, consts, batch):
        """Jitted `step(state, consts, batch) -> (state, metrics)` for these shardings."""
        rep = sharding.replicated(self.mesh)
        consts_sh = jax.tree.map(lambda x: x.sharding, consts)
        return jax.jit(self.step, in_shardings=(state_sh, consts_sh, self.batch_shardings(batch)),
                       out_shardings=(state_sh, rep), donate_argnums=0)

    def _key(self, state):
        return jax.random.fold_in(jax.random.PRNGKey(self.cfg.train.seed), state["step"])

    def _apply(self, state, net, loss_fn, batch, weight):
        """Weighted batch mean of loss_fn(params, ex, key) -> (loss, aux, x), gradient step on `net`.

        The batch runs as train.grad_accum micro-batches (`accumulated_grad`);
        x, the per-example output, comes back in batch order.
        """
        tx = self.tx if net == "gen" else self.tx_critic
        steps = self.cfg.train.get("grad_accum", 1)
        # accumulated_grad averages its micro-batches: each one's weighted sum is scaled by steps / sum(weight).
        scale = steps / jnp.maximum(jnp.sum(weight), 1.0)

        def micro_loss(params, bw, key):
            b, w = bw
            ls, aux, x = sharding.vmap_batch(lambda ex, k: loss_fn(params, ex, k))(b, jax.random.split(key, w.shape[0]))
            return jnp.sum(ls * w) * scale, (jax.tree.map(lambda a: jnp.sum(a * w) * scale, aux), x)

        (loss, (aux, x)), grads = self._grad(net, micro_loss, state[net], (batch, weight), self._key(state), steps)
        updates, opt = tx.update(grads, state[net + "_opt"], state[net])
        state = {**state, net: optax.apply_updates(state[net], updates), net + "_opt": opt,
                 "step": state["step"] + 1}
        return state, loss, dict(aux, grad_norm=optax.global_norm(grads)), x

    @staticmethod
    def _grad(net, loss_fn, params, batch, key, steps):
        """The one place a stage takes gradients of `net` (the dry run's memory estimate hooks in here)."""
        return accumulated_grad(loss_fn, params, batch, key, steps)


def accumulated_grad(loss_fn, params, batch, key, steps: int):
    """((loss, (aux, x)), grads) of loss_fn(params, batch, key) -> (loss, (aux, x)), over `steps` micro-batches.

    loss, aux and grads are averaged over the micro-batches, run in turn;
    x, a per-example output [B, ...], is gathered back into batch order.
    Micro-batch j takes rows j, j + steps, j + 2 steps... so that every
    data-parallel shard contributes to each; its key is fold_in(key, j).
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if steps == 1:
        return grad_fn(params, batch, key)
    micro = jax.tree.map(lambda a: jnp.swapaxes(a.reshape(a.shape[0] // steps, steps, *a.shape[1:]), 0, 1), batch)

    def body(total, j):
        (loss, (aux, x)), grads = grad_fn(params, jax.tree.map(lambda a: a[j], micro), jax.random.fold_in(key, j))
        total = jax.tree.map(lambda t, v: t + v / steps, total, (loss, aux, grads))
        return total, x

    loss_aux_grads = jax.eval_shape(grad_fn, params, jax.tree.map(lambda a: a[0], micro), key)
    (loss0, (aux0, _)), grads0 = loss_aux_grads
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (loss0, aux0, grads0))
    (loss, aux, grads), xs = jax.lax.scan(body, zeros, jnp.arange(steps))
    x = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1).reshape(a.shape[0] * a.shape[1], *a.shape[2:]), xs)
    return (loss, (aux, x)), grads


def _ones(batch) -> jax.Array:
    """Weight 1 for every example of the batch."""
    return jnp.ones((jax.tree.leaves(batch)[0].shape[0],), jnp.float32)


class TeacherStage(Stage):
    """Next-shot teacher: flow matching on the target frames, context and text dropout 0.1."""

    def step(self, state, consts, batch):
        cfg, net = self.cfg, self.gen
        t_frames = batch["target"].shape[1]  # this batch's length bucket

        def loss_fn(trained, ex, k):
            k_c, k_t, k_loss = jax.random.split(k, 3)
            if cfg.train.copy_frame:
                ex = copy_frame(ex, jax.random.fold_in(k, 3), cfg.train.copy_frame)
            if cfg.train.cue_frame:
                ex = cue_frame(ex, jax.random.fold_in(k, 4), cfg.train.cue_frame, cfg.train.cue_level)
            if cfg.train.random_copy:
                ex = random_copy(ex, jax.random.fold_in(k, 5), cfg.train.random_copy, cfg.train.random_copy_patch)
            ex = drop_text(drop_context(ex, k_c, cfg.train.context_dropout), k_t, cfg.train.text_dropout)
            dit = net.module(trained, state["gen_frozen"])
            fc = ex["context"].shape[0]
            loss, _ = teacher_lib.teacher_loss(
                dit, k_loss, ex["context"][None], ex["target"][None], _text_slots(ex)[None],
                frame_prompt=_frame_prompt(fc, t_frames), frame_pos=np.arange(fc + t_frames),
                frame_shot=_rope_shots(ex["context_shot"], t_frames), shot_theta=context_lib.shot_theta(cfg.shotstream),
                shift=cfg.shotstream.timestep_shift, foreground_weight=cfg.train.foreground_weight)
            return loss, {}, None

        state, loss, aux, _ = self._apply(state, "gen", loss_fn, batch, _ones(batch))
        return state, {"loss": loss, "flow_loss": loss, **aux}


class OdeInitStage(Stage):
    """ODE init: the student regresses the teacher's clean latents from its trajectory states."""

    def step(self, state, consts, batch):
        cfg, net = self.cfg, self.gen
        step_t = jnp.asarray(schedule.student_timesteps(cfg.shotstream.denoising_steps, cfg.shotstream.timestep_shift))

        def loss_fn(trained, ex, k):
            k_txt, k = jax.random.split(k)
            ex = drop_text(ex, k_txt, cfg.train.text_dropout)
            dit = net.module(trained, state["gen_frozen"])

            def x0_fn(x, t):
                v = student_velocity(cfg, dit, ex, x, t)
                return schedule.x0_from_velocity(x, v, t, cfg.shotstream.timestep_shift)

            return losses.ode_regression_loss(ex["ode"], ex["target"], k, x0_fn,
                                              chunk_frames=cfg.shotstream.chunk_frames, step_t=step_t), {}, None

        state, loss, aux, _ = self._apply(state, "gen", loss_fn, batch, _ones(batch))
        return state, {"loss": loss, "ode_loss": loss, **aux}


class DmdStage(Stage):
    """Intra-shot DMD: ground-truth context, the student rolls the target shot out.

    Steps alternate: step s updates the generator when s % (critic_steps + 1)
    == 0 and the critic otherwise (5 critic updates per generator update, the
    reference's dfake_gen_update_ratio 6).
    """

    two_nets = True

    def init_consts(self):
        cfg = self.cfg
        return {"real": self.teacher_params(),
                "uncond": jax.device_put(negative_embedding(cfg), sharding.replicated(self.mesh))}

    def _generated(self, state, ex, key, grad: bool = True):
        """Rolled-out target latents of the example ([T, h, w, C]) and the example it conditions on
        (after context dropout, which the generator and both scores then share, as in the reference).
        `grad`: the latents are differentiated w.r.t. the generator (its update, not the critic's)."""
        k_drop, k_roll = jax.random.split(key)
        ex = drop_context(ex, k_drop, self.cfg.train.context_dropout)
        dit = self.gen.module(state["gen"], state["gen_frozen"])
        return rollout(self.cfg, dit, ex, k_roll, grad), ex

    def _teacher_fns(self, consts, critic, critic_frozen, ex):
        real = nnx.merge(self.critic.full_graphdef, consts["real"])
        fake = self.critic.module(critic, critic_frozen)
        real_cfg, _, _ = teacher_x0_fns(self.cfg, real, ex, consts["uncond"], self.cfg.train.guidance_scale)
        _, fake_x0, fake_v = teacher_x0_fns(self.cfg, fake, ex, consts["uncond"], 0.0)
        return real_cfg, fake_x0, fake_v

    def step(self, state, consts, batch):
        state, metrics, _ = self.update(state, consts, batch, _ones(batch))
        return state, metrics

    def update(self, state, consts, batch, weight):
        """One optimiser step (generator or critic by the step counter) on the examples of `batch`
        weighted by `weight` f32[B]; returns (state, metrics, the rolled-out latents [B, T, h, w, C])."""
        is_gen = state["step"] % (self.cfg.train.critic_steps + 1) == 0
        return jax.lax.cond(is_gen, self.generator_update, self.critic_update, state, consts, batch, weight)

    def generator_update(self, state, consts, batch, weight):
        t = self.cfg.train

        def loss_fn(trained, ex, k):
            k_roll, k_dmd = jax.random.split(k)
            x, ex = self._generated({**state, "gen": trained}, ex, k_roll)
            real_x0, fake_x0, _ = self._teacher_fns(consts, state["critic"], state["critic_frozen"], ex)
            loss, aux = losses.dmd_generator_loss(x, k_dmd, real_x0, fake_x0, min_t=t.min_t, max_t=t.max_t,
                                                  shift=self.cfg.shotstream.timestep_shift)
            return loss, aux, jax.lax.stop_gradient(x)

        state, loss, aux, x = self._apply(state, "gen", loss_fn, batch, weight)
        return state, {"loss": loss, "generator_loss": loss, "critic_loss": jnp.float32(jnp.nan),
                       "is_generator_step": jnp.int32(1), **aux}, x

    def critic_update(self, state, consts, batch, weight):
        t = self.cfg.train

        def loss_fn(critic, ex, k):
            k_roll, k_c = jax.random.split(k)
            x, ex = self._generated(state, ex, k_roll, grad=False)
            x = jax.lax.stop_gradient(x)
            _, _, fake_v = self._teacher_fns(consts, critic, state["critic_frozen"], ex)
            return losses.critic_loss(x, k_c, fake_v, min_t=t.min_t, max_t=t.max_t,
                                      shift=self.cfg.shotstream.timestep_shift), {}, x

        state, loss, aux, x = self._apply(state, "critic", loss_fn, batch, weight)
        return state, {"loss": loss, "generator_loss": jnp.float32(jnp.nan), "critic_loss": loss,
                       "is_generator_step": jnp.int32(0), "dmd_grad_abs": jnp.float32(jnp.nan),
                       "dmd_t": jnp.float32(jnp.nan), **aux}, x


def vae_params(cfg, mesh) -> tuple:
    """(graphdef, parameters) of the Wan VAE that decodes and re-encodes generated shots in dmd_inter:
    the one of `data.encoder_dir`, or (toy runs without one) the default model's tiny VAE."""
    from shotstream_jax.models.wan_vae import WanVAE
    if cfg.data.encoder_dir:
        _, _, vae, _ = model_dir.load_pipeline(cfg.data.encoder_dir)
    elif cfg.size == "toy":
        from shotstream_jax import default_model
        vae = WanVAE(default_model.VAE, rngs=nnx.Rngs(cfg.train.seed + 2))
    else:
        raise ValueError(f"dmd_inter with size {cfg.size!r} decodes and re-encodes generated shots with the Wan VAE: "
                         f"set --config.data.encoder_dir to a full model directory (shotstream-convert --vae=...)")
    graphdef, params = nnx.split(vae, nnx.Param)
    return graphdef, jax.device_put(params.to_pure_dict(), sharding.replicated(mesh))


def context_picks(max_shots: int, shot_pixels: int, budget: int) -> np.ndarray:
    """Static table of the dynamic sampling rule: row i = (shot, pixel frame) of the `budget` context
    frames of shot i given i finished shots of `shot_pixels` frames (row 0, no history, unused)."""
    table = np.zeros((max_shots, budget, 2), np.int32)
    for i in range(1, max_shots):
        table[i] = context_lib.sample_context([shot_pixels] * i, budget)
    return table


class DmdInterStage(DmdStage):
    """Inter-shot DMD (`trainer/distillation_frameconcat_streaming.py`): every shot of the training
    video, shot 0 included, is rolled out from self-generated history with one optimiser step each.

    One call of `step` takes a batch of videos and loops over shot slots 0..data.max_shots-1:
    shot i's context is sampled by the dynamic rule from the pixel frames of shots 0..i-1 as
    generated so far (each rollout decoded by the VAE), re-encoded frame by frame as inference
    does (shot 0: six zero latents in RoPE shot 0); its rollout gets one generator or critic
    update (the step counter alternates them as in dmd_intra) and is then decoded for the next
    shots. Slots past a video's own shot count are skipped (weight 0; no update when the whole
    batch is done). The step counter counts optimiser updates, so it grows by the shot count.
    """

    def init_consts(self):
        consts = super().init_consts()
        self.vae_graphdef, consts["vae"] = vae_params(self.cfg, self.mesh)
        return consts

    def step(self, state, consts, batch):
        state, metrics, _ = self.video_step(state, consts, batch)
        return state, metrics

    def video_step(self, state, consts, batch):
        """(state, metrics, {'shots': latents [B, S, T, h, w, C], 'context': [B, S, Fc, h, w, C],
        'context_shot': [B, S, Fc]}) for the S = data.max_shots shot slots of the batch's videos."""
        cfg, s = self.cfg, self.cfg.shotstream
        vae_cfg = nnx.merge(self.vae_graphdef, consts["vae"]).cfg
        b, slots, fc = batch["text"].shape[0], cfg.data.max_shots, s.context_frames
        shots = jnp.minimum(batch["num_shots"], slots)
        latent_shape = (s.shot_latent_frames, *batch["context"].shape[2:])
        pixels = vae_cfg.temporal_factor * (s.shot_latent_frames - 1) + 1
        picks = jnp.asarray(context_picks(slots, pixels, fc))
        frames0 = jnp.zeros((b, slots, pixels, cfg.video.height, cfg.video.width, 3), jnp.float32)

        def one_shot(carry, i):
            state, frames = carry
            vae = nnx.merge(self.vae_graphdef, consts["vae"])  # inside the scan: its trace owns the module
            hist = jax.vmap(lambda f: f[picks[i, :, 0], picks[i, :, 1]])(frames)
            # Each context frame re-encoded as its own 1-frame clip (the batch axis), as inference does.
            enc = vae.cfg.normalize(vae.encode(hist.reshape(b * fc, 1, *hist.shape[2:]))[:, 0])
            ctx = jnp.where(i == 0, 0.0, enc.reshape(b, fc, *enc.shape[1:]))
            ctx_shot = jnp.broadcast_to(jnp.where(i == 0, 0, picks[i, :, 0]), (b, fc))
            shot_batch = dict(batch, context=ctx.astype(jnp.float32), context_shot=ctx_shot,
                              target=jnp.zeros((b, *latent_shape), jnp.float32),
                              target_shot=jnp.full((b,), i, jnp.int32))
            weight = (i < shots).astype(jnp.float32)

            def run(st):
                return self.update(st, consts, shot_batch, weight)

            out_shapes = jax.eval_shape(run, state)[1:]

            def skip(st):  # every video of the batch is done: no rollout, no update
                return (st, *jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), out_shapes))

            active = jnp.any(i < shots)
            state, m, x = jax.lax.cond(active, run, skip, state)
            decoded = vae.decode(vae.cfg.denormalize(x))
            frames = frames.at[:, i].set(decoded.astype(jnp.float32))
            return (state, frames), (dict(m, active=active.astype(jnp.float32)), x, ctx, ctx_shot)

        (state, _), (ms, xs, ctxs, ctx_shots) = jax.lax.scan(one_shot, (state, frames0), jnp.arange(slots))
        active = ms.pop("active")
        gen = active * ms.pop("is_generator_step")

        def masked_mean(v, mask):  # nan when no update of that kind ran
            n = jnp.sum(mask)
            return jnp.where(n > 0, jnp.sum(jnp.where(mask > 0, v, 0.0)) / jnp.maximum(n, 1.0), jnp.nan)

        masks = {"generator_loss": gen, "dmd_grad_abs": gen, "dmd_t": gen, "critic_loss": active - gen}
        metrics = {k: masked_mean(v, masks.get(k, active)) for k, v in ms.items()}
        metrics.update(shots=jnp.sum(active), generator_updates=jnp.sum(gen), critic_updates=jnp.sum(active - gen))
        out = {"shots": jnp.swapaxes(xs, 0, 1), "context": jnp.swapaxes(ctxs, 0, 1),
               "context_shot": jnp.swapaxes(ctx_shots, 0, 1)}
        return state, metrics, out


STAGES = {"teacher": TeacherStage, "ode_init": OdeInitStage, "dmd_intra": DmdStage, "dmd_inter": DmdInterStage}


def negative_embedding(cfg) -> jax.Array:
    """The unconditional branch of CFG: [L, Dt]. The reference's negative prompt, embedded, or
    (train.uncond_text="zeros") the all-zero embedding that text dropout trains: a model trained from
    scratch never sees the negative prompt, and CFG away from it draws noise."""
    if cfg.train.uncond_text == "zeros":
        return jnp.zeros((cfg.model.text_len, cfg.model.text_dim), jnp.float32)
    if cfg.train.uncond_text != "negative_prompt":
        raise ValueError(f"train.uncond_text must be 'negative_prompt' or 'zeros', got {cfg.train.uncond_text!r}")
    if cfg.data.latents_dir:
        path = checkpoint.as_path(cfg.data.latents_dir) / "negative_text.npy"
        try:
            with path.open("rb") as f:
                return jnp.asarray(np.load(f).astype(np.float32))
        except OSError as e:
            raise FileNotFoundError(f"{path}: missing; pre-encode the data again to write it") from e
    _, encode_text = pipeline.encoders(cfg)
    return jnp.asarray(encode_text([pipeline.NEGATIVE_PROMPT])[0])


# ------------------------------------------------------------------ ODE pairs


def ode_save_steps(cfg) -> tuple[int, ...]:
    """Steps of the teacher's sampler nearest the student's timesteps ((0, 13, 25, 37) of 50 in the reference)."""
    shift = cfg.shotstream.timestep_shift
    ts, _ = schedule.teacher_timesteps(cfg.train.ode_steps, shift)
    return tuple(int(np.argmin(np.abs(ts - t))) for t in schedule.student_timesteps(cfg.shotstream.denoising_steps, shift))


def ode_trajectory(cfg, dit: WanDiT, ex, key: jax.Array, uncond: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Teacher sampling with CFG of one example (`teacher.sample`, `Teacher_Ode_Sample.py`).

    Returns (the sampler's inputs at `ode_save_steps` [S, T, h, w, C], its sample x0 [T, h, w, C]).
    """
    fc, tf = ex["context"].shape[0], ex["target"].shape[0]
    layout = context_lib.ShotLayout(np.arange(fc + tf), _rope_shots(ex["context_shot"], tf), _frame_prompt(fc, tf))
    noise = jax.random.normal(key, (1,) + ex["target"].shape, jnp.float32)
    x0, inputs = teacher_lib.sample(
        dit, ex["context"][None], noise, dit.encode_text(_text_slots(ex)[None]), dit.encode_text(uncond[None]),
        layout, guidance=cfg.train.ode_guidance, num_steps=cfg.train.ode_steps, shift=cfg.shotstream.timestep_shift,
        shot_theta=context_lib.shot_theta(cfg.shotstream), save_steps=ode_save_steps(cfg))
    return inputs[:, 0], x0[0]


# ------------------------------------------------------------------ VAE (reconstruction)


class VideoClipSource:
    """Pixel clips for the VAE stage: item i -> {"video": f32[clip_frames, H, W, 3] in [-1, 1]}.

    Item i is a window of `train.clip_frames` frames inside one shot (never across a cut: the
    decoder streams shot by shot) of manifest row i % rows, its shot and offset drawn from i.
    """

    def __init__(self, clips, cfg, repeats: int = 8):
        self.clips, self.cfg, self.repeats = clips, cfg, repeats

    def __len__(self):
        return len(self.clips) * self.repeats

    def __getitem__(self, i):
        clip, n = self.clips[i % len(self.clips)], self.cfg.train.clip_frames
        rng = np.random.default_rng([self.cfg.data.shuffle_seed, i])
        start, end = clip.ranges[rng.integers(len(clip.ranges))]
        if end - start < n:
            return None
        start += int(rng.integers(end - start - n + 1))
        try:
            frames = pipeline.read_video(clip.video, start + n)[start:]
        except ValueError as e:
            log.warning("skipping clip %s: %s", clip.video, e)
            return None
        return {"video": pipeline.resize(frames, self.cfg.video.height, self.cfg.video.width, self.cfg.data.resize)}


class EncoderStage(Stage):
    """A network trained alone and replicated (vae, text): the state around `_start()`'s parameters,
    and the step on `loss(params, batch, key) -> (loss, aux)` one example at a time."""

    frozen: tuple = ()   # top-level parameter names held fixed (in state["gen_frozen"])

    def _start(self) -> dict:
        """The network's starting parameters (concrete)."""
        raise NotImplementedError

    def _shape(self) -> dict:
        """Their ShapeDtypeStructs, without loading or creating anything big."""
        return jax.eval_shape(self._start)

    def _init(self, params):
        trained = {k: v for k, v in params.items() if k not in self.frozen}
        frozen = {k: v for k, v in params.items() if k in self.frozen}
        return {"step": jnp.zeros((), jnp.int32), "gen": trained, "gen_frozen": frozen,
                "gen_opt": self.tx.init(trained)}

    def abstract_state(self):
        abstract = jax.eval_shape(self._init, self._shape())
        return abstract, jax.tree.map(lambda _: sharding.replicated(self.mesh), abstract)

    def init_state(self):
        _, sh = self.abstract_state()
        return jax.jit(self._init, out_shardings=sh)(self._start()), sh

    def step(self, state, consts, batch):
        def loss_fn(params, ex, k):
            loss, aux = self.loss({**params, **state["gen_frozen"]}, jax.tree.map(lambda a: a[None], ex), k)
            return loss, aux, None

        state, loss, aux, _ = self._apply(state, "gen", loss_fn, batch, _ones(batch))
        return state, {"loss": loss, **aux}


class VaeStage(EncoderStage):
    """A Wan-architecture VAE trained from scratch to reconstruct the data (squared + absolute error).

    The posterior mean is the latent (as generation uses it); a small penalty on it keeps its scale
    bounded. The export is a full model directory, usable as `data.encoder_dir`: this VAE with latent
    mean/std fitted on the data, the frozen random umT5-architecture text encoder and tokenizer of
    the `text_encoder` section, and an untrained DiT of the `model` section.

    train.decoder_only (with train.init_dir) trains the decoder side alone: the encoder and its
    quant conv stay as loaded, so the latents, their mean/std and anything trained on them (a DiT,
    pre-encoded data) stay valid while the decoder learns to draw them sharper. The export is then
    init_dir with this VAE: its DiT, text encoder and tokenizer unchanged.
    """

    def __init__(self, cfg, mesh):
        from shotstream_jax.models.wan_vae import WanVAE, WanVAEConfig
        self.cfg, self.mesh = cfg, mesh
        self.vae_cfg = WanVAEConfig(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                                       for k, v in cfg.vae.to_dict().items()})
        self.make = lambda vae_cfg, seed: WanVAE(vae_cfg, rngs=nnx.Rngs(seed))
        self.graphdef = nnx.graphdef(nnx.eval_shape(lambda: self.make(self.vae_cfg, 0)))
        self.tx = optimizer(cfg, cfg.train.lr, cfg.train.clip_norm)
        self.src = None
        if cfg.train.decoder_only:
            if not cfg.train.init_dir:
                raise ValueError("train.decoder_only needs train.init_dir: the model directory whose encoder "
                                 "(and latent space) stays fixed")
            self.frozen = ("encoder", "quant_conv")

    def source(self, workdir: str):
        """Pixel clips of the manifest (a generated toy dataset in `workdir` when none is configured)."""
        clips, _ = pipeline.manifest.read_manifest(pipeline.manifest_path(self.cfg, workdir), min_shots=1)
        self.src = VideoClipSource(clips, self.cfg)
        return self.src

    def _shape(self):
        return jax.eval_shape(lambda: nnx.state(self.make(self.vae_cfg, 0)).to_pure_dict())

    def _start(self):
        """Fresh weights from train.seed, or (train.init_dir: a model directory, e.g. an earlier vae
        stage's export/) its VAE's weights, to go on training on other clips."""
        if not self.cfg.train.init_dir:
            return nnx.state(self.make(self.vae_cfg, self.cfg.train.seed)).to_pure_dict()
        path = checkpoint.as_path(self.cfg.train.init_dir) / "vae"
        if not path.is_dir():
            raise FileNotFoundError(f"{self.cfg.train.init_dir}: not a model directory with a VAE (no vae/)")
        try:
            vae = checkpoint.load_state(str(path), lambda: self.make(self.vae_cfg, 0))
        except (ValueError, KeyError) as e:
            raise ValueError(f"{self.cfg.train.init_dir}: its VAE does not match the config's vae "
                             f"section ({e})") from e
        return nnx.state(vae).to_pure_dict()

    def loss(self, params, batch, key=None):
        """(squared + absolute reconstruction error + latent penalty, {l1, psnr}) of a batch of clips.

        train.foreground_weight > 0 weights each pixel's errors by teacher.foreground_weights of the
        clip (what stands out from its frame's median colour) and normalises by the weights' sum; l1
        and psnr stay unweighted.
        """
        vae = nnx.merge(self.graphdef, params)
        x = batch["video"]
        z = vae.encode(x)
        err = vae.decode(z) - x
        l2, l1 = jnp.mean(err ** 2), jnp.mean(jnp.abs(err))
        strength = self.cfg.train.foreground_weight
        if strength:
            w = teacher_lib.foreground_weights(x, strength)
            recon = jnp.sum(w * (err ** 2 + jnp.abs(err))) / (jnp.sum(w) * x.shape[-1])
        else:
            recon = l2 + l1
        loss = recon + self.cfg.train.latent_penalty * jnp.mean(z ** 2)
        return loss, {"l1": l1, "psnr": 10 * jnp.log10(4.0 / l2)}

    def export(self, state, out_dir: str) -> None:
        import dataclasses
        from shotstream_jax.models.umt5 import UMT5Config, UMT5Encoder
        cfg, te = self.cfg, self.cfg.text_encoder
        params = jax.device_get({**state["gen"], **state["gen_frozen"]})
        vae = nnx.merge(self.graphdef, params)
        if cfg.train.decoder_only:  # init_dir with this decoder: its latent space, DiT and text encoder kept
            init_cfg = model_dir.saved_vae_config(cfg.train.init_dir)
            vae = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: self.make(init_cfg, 0))), nnx.state(vae))
            model_dir.replace_vae(cfg.train.init_dir, out_dir, vae)
            return
        encode = jax.jit(lambda p, x: nnx.merge(self.graphdef, p).encode(x))
        z = np.concatenate([np.asarray(encode(params, self.src[i]["video"][None])).reshape(-1, self.vae_cfg.z_dim)
                            for i in range(min(len(self.src), cfg.train.stats_batches))
                            if self.src[i] is not None])
        stats_cfg = dataclasses.replace(self.vae_cfg, latents_mean=tuple(map(float, z.mean(0))),
                                        latents_std=tuple(map(float, z.std(0) + 1e-6)))
        vae = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: self.make(stats_cfg, 0))), nnx.state(vae))
        if te.tokenizer:
            from tokenizers import Tokenizer as HFTokenizer
            vocab = HFTokenizer.from_file(te.tokenizer).get_vocab_size()
        else:
            from shotstream_jax.text import ByteTokenizer
            vocab = ByteTokenizer.vocab_size
        d = cfg.model.text_dim
        t5 = UMT5Encoder(UMT5Config(vocab_size=vocab, d_model=d, d_kv=d // te.num_heads, d_ff=te.d_ff,
                                    num_heads=te.num_heads, num_layers=te.num_layers, num_buckets=te.num_buckets,
                                    max_distance=te.max_distance), rngs=nnx.Rngs(te.seed))
        dit = WanDiT(dit_config(cfg), rngs=nnx.Rngs(cfg.train.seed))
        model_dir.save(out_dir, dit, vae=vae, text_model=t5, tokenizer=te.tokenizer or "bytes", config=cfg,
                       overwrite=True)


STAGES["vae"] = VaeStage


# ------------------------------------------------------------------ text encoder (word context)


class PromptSource:
    """Token ids of every shot prompt of the manifest, as the data pipeline builds them:
    item i -> {"ids", "mask": int32[text_len]}."""

    def __init__(self, clips, text_encoder):
        self.prompts = sorted({p for clip in clips for p in clip.prompts})
        self.text_encoder = text_encoder

    def __len__(self):
        return len(self.prompts)

    def __getitem__(self, i):
        ids, mask = self.text_encoder.tokenize(self.prompts[i])
        return {"ids": ids, "mask": mask}


class TextStage(EncoderStage):
    """The umT5-architecture text encoder of a model directory, taught the word order of the data's prompts.

    Where no pretrained umT5 exists (the Shapes world), a random frozen encoder mixes its tokens
    almost evenly: in `a red circle ... on a blue background` both colour words come out nearly
    alike, and the DiT cannot tell which names the background. Here each token's output learns to
    predict the words at `train.text_offsets` around it (linear heads, cross-entropy), which puts
    the syntax a pretrained encoder carries into every token. The export is the model directory
    of `train.init_dir` with this encoder in place of its own.
    """

    def __init__(self, cfg, mesh):
        if not cfg.train.init_dir:
            raise ValueError("the text stage needs --config.train.init_dir: a model directory with a VAE, "
                             "umT5 and tokenizer (e.g. the vae stage's export/)")
        self.cfg, self.mesh = cfg, mesh
        _, _, _, self.text_encoder = model_dir.load_pipeline(cfg.train.init_dir)
        self.graphdef = nnx.graphdef(self.text_encoder.model)
        self.tx = optimizer(cfg, cfg.train.lr, cfg.train.clip_norm)

    def source(self, workdir: str):
        clips, _ = pipeline.manifest.read_manifest(pipeline.manifest_path(self.cfg, workdir), min_shots=1)
        return PromptSource(clips, self.text_encoder)

    def _start(self):
        tcfg = self.text_encoder.model.cfg
        key = jax.random.PRNGKey(self.cfg.train.seed)
        heads = 0.02 * jax.random.normal(key, (len(self.cfg.train.text_offsets), tcfg.d_model, tcfg.vocab_size))
        return {"t5": nnx.state(self.text_encoder.model).to_pure_dict(), "heads": heads}

    def loss(self, params, batch, key=None):
        """(mean cross-entropy of the words at each offset, {accuracy}) of batch {"ids", "mask": int32[B, L]}."""
        ids, mask = batch["ids"], batch["mask"]
        h = nnx.merge(self.graphdef, params["t5"])(ids, mask)
        length = ids.shape[1]
        total = correct = count = 0.0
        for o, head in zip(self.cfg.train.text_offsets, params["heads"]):
            pos = jnp.arange(length) + o
            valid = (mask > 0) & (pos >= 0) & (pos < length)
            target = jnp.take(ids, jnp.clip(pos, 0, length - 1), axis=1)
            valid &= jnp.take(mask, jnp.clip(pos, 0, length - 1), axis=1) > 0
            logits = h @ head
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, target)
            total += jnp.sum(ce * valid)
            correct += jnp.sum((jnp.argmax(logits, -1) == target) * valid)
            count += jnp.sum(valid)
        return total / count, {"accuracy": correct / count}

    def export(self, state, out_dir: str) -> None:
        from shotstream_jax.text import Tokenizer
        _, dit, vae, te = model_dir.load_pipeline(self.cfg.train.init_dir)
        t5 = nnx.merge(self.graphdef, jax.device_get(state["gen"]["t5"]))
        tok = "bytes" if not isinstance(te.tokenizer, Tokenizer) else te.tokenizer.path
        model_dir.save(out_dir, dit, vae=vae, text_model=t5, tokenizer=tok, config=self.cfg, overwrite=True)


STAGES["text"] = TextStage
