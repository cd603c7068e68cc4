"""The training stages as jitted, sharded step functions over explicit state pytrees.

A stage owns:
  state   checkpointed pytree: {'step', 'gen', 'gen_frozen', 'gen_opt'[, 'critic', 'critic_opt']}
          (pure parameter dicts of the trained networks and their optax states);
  consts  frozen inputs re-made on resume: the teacher's parameters (real score)
          and the unconditional text embedding;
and `step(state, consts, batch) -> (state, metrics)`, compiled once. The RNG of
step s is fold_in(seed, s), so a resumed run draws the same numbers.

Networks:
  teacher    bidirectional next-shot DiT over FrameConcat(context, target) (models/teacher.py);
  generator  the causal student (models/student.py): Self-Forcing rollouts with
             the dual KV cache for DMD, the block-causal full-sequence pass for ODE init;
  critic     fake score, initialised from the teacher.
"""
from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from shotstream_jax import context as context_lib
from shotstream_jax import model_dir, schedule, sharding
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
    ckpt = os.path.join(os.path.abspath(path), "dit")
    if not os.path.isdir(ckpt):
        raise FileNotFoundError(f"{path}: not a model directory (no dit/); convert weights with shotstream-convert "
                                f"or point at a previous stage's WORKDIR/export")
    target = jax.tree.map(lambda a, d: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=d), shapes, sh)
    with ocp.StandardCheckpointer() as ckptr:
        try:
            return ckptr.restore(ckpt, target)
        except (ValueError, KeyError) as e:
            raise ValueError(f"{path}: parameters do not match the config's model section ({e})") from e


def optimizer(cfg, lr: float, clip: float) -> optax.GradientTransformation:
    t = cfg.train
    lr_sched = optax.linear_schedule(0.0, lr, t.warmup_steps) if t.warmup_steps else lr
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


def rollout(cfg, dit: WanDiT, ex, key: jax.Array) -> jax.Array:
    """Self-Forcing rollout of the target shot with the dual cache (`student.rollout_shot`).

    The global cache is filled from the example's context at t=0; every chunk
    is denoised up to one exit step drawn here and shared by all chunks; only
    the exit-step predictions carry gradients, through the weights and the
    target prompt's text K/V (earlier steps and cache passes use
    stop_gradient(params)). Returns x0 [T, h, w, C].
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
        ex["context_shot"][-1] + 1, exit_step, theta, ts, s.chunk_frames)
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
            self.critic = Net(cfg, "all")
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
            state.update(critic=critic_params, critic_opt=self.tx_critic.init(critic_params))
        return state

    def teacher_params(self) -> dict:
        """Teacher parameters: train.teacher_dir, or (toy runs without one) a fresh net from seed + 1."""
        return dit_params(self.cfg, self.mesh, self.cfg.train.teacher_dir, self.cfg.train.seed + 1)

    def _names(self, abstract_state):
        n = {"step": (), "gen": self.gen.names["train"], "gen_frozen": self.gen.names["frozen"]}
        if self.gen.kind == "lora":
            n["gen"] = lora_lib.names(abstract_state["gen"], self.gen.names["all"])
            n["gen_frozen"] = self.gen.names["all"]
        if self.two_nets:
            n["critic"] = self.critic.names["all"]
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

    def _update(self, state, loss_fn, batch, key, net="gen"):
        tx = self.tx if net == "gen" else self.tx_critic
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state[net], batch, key)
        updates, opt = tx.update(grads, state[net + "_opt"], state[net])
        aux = dict(aux, grad_norm=optax.global_norm(grads))
        return {**state, net: optax.apply_updates(state[net], updates), net + "_opt": opt}, loss, aux

    def export(self, state, out_dir: str) -> None:
        """Write the trained network as a model directory (LoRA merged in).

        With `data.encoder_dir` the export also holds that directory's VAE, text
        encoder and tokenizer: a full model directory that generates.
        """
        host = jax.device_get({"gen": state["gen"], "frozen": state["gen_frozen"]})
        encoders = {}
        if self.cfg.data.encoder_dir:
            _, _, vae, text = model_dir.load_pipeline(self.cfg.data.encoder_dir)
            encoders = dict(vae=vae, text_model=text.model, tokenizer=getattr(text.tokenizer, "path", "bytes"))
        model_dir.save(out_dir, self.gen.module(host["gen"], host["frozen"]), config=self.cfg, overwrite=True,
                       **encoders)


def _batch_mean(fn, batch, key):
    """Mean over the batch of fn(example, key) -> (loss, aux dict)."""
    b = jax.tree.leaves(batch)[0].shape[0]
    losses_, aux = jax.vmap(fn)(batch, jax.random.split(key, b))
    return jnp.mean(losses_), jax.tree.map(jnp.mean, aux)


class TeacherStage(Stage):
    """Next-shot teacher: flow matching on the target frames, context and text dropout 0.1."""

    def step(self, state, consts, batch):
        cfg, net = self.cfg, self.gen
        t_frames = cfg.shotstream.shot_latent_frames

        def loss_fn(trained, batch, key):
            def one(ex, k):
                k_c, k_t, k_loss = jax.random.split(k, 3)
                drop_ctx = jax.random.uniform(k_c) < cfg.train.context_dropout
                drop_txt = jax.random.uniform(k_t) < cfg.train.text_dropout
                ctx = jnp.where(drop_ctx, 0.0, ex["context"])
                shots = jnp.where(drop_ctx, 0, ex["context_shot"])
                text = jnp.where(drop_txt, 0.0, _text_slots(ex))
                dit = net.module(trained, state["gen_frozen"])
                fc = ctx.shape[0]
                loss, _ = teacher_lib.teacher_loss(
                    dit, k_loss, ctx[None], ex["target"][None], text[None],
                    frame_prompt=_frame_prompt(fc, t_frames), frame_pos=np.arange(fc + t_frames),
                    frame_shot=_rope_shots(shots, t_frames), shot_theta=context_lib.shot_theta(cfg.shotstream),
                    shift=cfg.shotstream.timestep_shift)
                return loss, {}
            return _batch_mean(one, batch, key)

        state, loss, aux = self._update(state, loss_fn, batch, self._key(state))
        return {**state, "step": state["step"] + 1}, {"loss": loss, "flow_loss": loss, **aux}


class OdeInitStage(Stage):
    """ODE init: the student regresses the teacher's clean latents from its trajectory states."""

    def step(self, state, consts, batch):
        cfg, net = self.cfg, self.gen
        step_t = jnp.asarray(schedule.student_timesteps(cfg.shotstream.denoising_steps, cfg.shotstream.timestep_shift))

        def loss_fn(trained, batch, key):
            def one(ex, k):
                dit = net.module(trained, state["gen_frozen"])

                def x0_fn(x, t):
                    v = student_velocity(cfg, dit, ex, x, t)
                    return schedule.x0_from_velocity(x, v, t, cfg.shotstream.timestep_shift)

                return losses.ode_regression_loss(ex["ode"], ex["target"], k, x0_fn,
                                                  chunk_frames=cfg.shotstream.chunk_frames, step_t=step_t), {}
            return _batch_mean(one, batch, key)

        state, loss, aux = self._update(state, loss_fn, batch, self._key(state))
        return {**state, "step": state["step"] + 1}, {"loss": loss, "ode_loss": loss, **aux}


class DmdStage(Stage):
    """Intra-shot DMD: ground-truth context, the student rolls the target shot out.

    Steps alternate: step s updates the generator when s % (critic_steps + 1)
    == 0 and the critic otherwise (5 critic updates per generator update).
    """

    two_nets = True

    def init_consts(self):
        cfg = self.cfg
        return {"real": self.teacher_params(),
                "uncond": jax.device_put(negative_embedding(cfg), sharding.replicated(self.mesh))}

    def _generated(self, state, ex, key, grad: bool):
        """Rolled-out target latents of the example ([T, h, w, C]) and the example it conditions on."""
        dit = self.gen.module(state["gen"], state["gen_frozen"])
        return rollout(self.cfg, dit, ex, key), ex

    def _teacher_fns(self, consts, critic_params, ex):
        real = nnx.merge(self.critic.full_graphdef, consts["real"])
        fake = nnx.merge(self.critic.full_graphdef, critic_params)
        real_cfg, _, _ = teacher_x0_fns(self.cfg, real, ex, consts["uncond"], self.cfg.train.guidance_scale)
        _, fake_x0, fake_v = teacher_x0_fns(self.cfg, fake, ex, consts["uncond"], 0.0)
        return real_cfg, fake_x0, fake_v

    def step(self, state, consts, batch):
        is_gen = state["step"] % (self.cfg.train.critic_steps + 1) == 0
        return jax.lax.cond(is_gen, self.generator_step, self.critic_step, state, consts, batch)

    def generator_step(self, state, consts, batch):
        t = self.cfg.train

        def loss_fn(trained, batch, key):
            def one(ex, k):
                k_roll, k_dmd = jax.random.split(k)
                x, ex = self._generated({**state, "gen": trained}, ex, k_roll, grad=True)
                real_x0, fake_x0, _ = self._teacher_fns(consts, state["critic"], ex)
                return losses.dmd_generator_loss(x, k_dmd, real_x0, fake_x0, min_t=t.min_t, max_t=t.max_t,
                                                 shift=self.cfg.shotstream.timestep_shift)
            return _batch_mean(one, batch, key)

        state, loss, aux = self._update(state, loss_fn, batch, self._key(state))
        metrics = {"loss": loss, "generator_loss": loss, "critic_loss": jnp.float32(jnp.nan),
                   "is_generator_step": jnp.int32(1), **aux}
        return {**state, "step": state["step"] + 1}, metrics

    def critic_step(self, state, consts, batch):
        t = self.cfg.train

        def loss_fn(critic, batch, key):
            def one(ex, k):
                k_roll, k_c = jax.random.split(k)
                x, ex = self._generated(state, ex, k_roll, grad=False)
                _, _, fake_v = self._teacher_fns(consts, critic, ex)
                return losses.critic_loss(x, k_c, fake_v, min_t=t.min_t, max_t=t.max_t,
                                          shift=self.cfg.shotstream.timestep_shift), {}
            return _batch_mean(one, batch, key)

        state, loss, aux = self._update(state, loss_fn, batch, self._key(state), net="critic")
        metrics = {"loss": loss, "generator_loss": jnp.float32(jnp.nan), "critic_loss": loss,
                   "is_generator_step": jnp.int32(0), "dmd_grad_abs": jnp.float32(jnp.nan),
                   "dmd_t": jnp.float32(jnp.nan), **aux}
        return {**state, "step": state["step"] + 1}, metrics


class DmdInterStage(DmdStage):
    """Inter-shot DMD: every shot of the video is generated from self-generated history.

    Shots 0..S-2 are rolled out without gradient; their latents feed the
    context of the next shot through the dynamic sampling rule; the DMD
    (and critic) losses apply to the last shot, conditioned on that history.
    """

    def _generated(self, state, ex, key, grad: bool):
        cfg = self.cfg
        s_shots, budget = cfg.train.num_shots, cfg.shotstream.context_frames
        dit = self.gen.module(state["gen"], state["gen_frozen"])
        shots = []
        keys = jax.random.split(key, s_shots)
        for s in range(s_shots):
            if s == 0:
                ctx, ctx_shot = jnp.zeros_like(ex["context"]), jnp.zeros((budget,), jnp.int32)
            else:
                picks = context_lib.sample_context([ex["target"].shape[0]] * s, budget)
                ctx = jnp.stack([shots[k][i] for k, i in picks])
                ctx_shot = jnp.asarray([k for k, _ in picks], jnp.int32)
            cur = dict(ex, context=ctx, context_shot=ctx_shot, target_shot=jnp.int32(s))
            x = rollout(cfg, dit, cur, keys[s])
            if s < s_shots - 1 or not grad:
                x = jax.lax.stop_gradient(x)
            shots.append(x)
        return shots[-1], cur


STAGES = {"teacher": TeacherStage, "ode_init": OdeInitStage, "dmd_intra": DmdStage, "dmd_inter": DmdInterStage}


def negative_embedding(cfg) -> jax.Array:
    """Text embedding of the reference's negative prompt, the unconditional branch of CFG: [L, Dt]."""
    if cfg.data.latents_dir:
        path = os.path.join(cfg.data.latents_dir, "negative_text.npy")
        try:
            return jnp.asarray(np.load(path).astype(np.float32))
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
        return {"video": pipeline.resize_crop(frames, self.cfg.video.height, self.cfg.video.width)}


class VaeStage(Stage):
    """A Wan-architecture VAE trained from scratch to reconstruct the data (squared + absolute error).

    The posterior mean is the latent (as generation uses it); a small penalty on it keeps its scale
    bounded. The export is a full model directory, usable as `data.encoder_dir`: this VAE with latent
    mean/std fitted on the data, the frozen random umT5-architecture text encoder and tokenizer of
    the `text_encoder` section, and an untrained DiT of the `model` section.
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

    def source(self, workdir: str):
        """Pixel clips of the manifest (a generated toy dataset in `workdir` when none is configured)."""
        clips, _ = pipeline.manifest.read_manifest(pipeline.manifest_path(self.cfg, workdir), min_shots=1)
        self.src = VideoClipSource(clips, self.cfg)
        return self.src

    def _init(self):
        params = nnx.state(self.make(self.vae_cfg, self.cfg.train.seed)).to_pure_dict()
        return {"step": jnp.zeros((), jnp.int32), "gen": params, "gen_frozen": {}, "gen_opt": self.tx.init(params)}

    def abstract_state(self):
        abstract = jax.eval_shape(self._init)
        return abstract, jax.tree.map(lambda _: sharding.replicated(self.mesh), abstract)

    def init_state(self):
        _, sh = self.abstract_state()
        return jax.jit(self._init, out_shardings=sh)(), sh

    def loss(self, params, batch, key=None):
        """(squared + absolute reconstruction error + latent penalty, {l1, psnr}) of a batch of clips."""
        vae = nnx.merge(self.graphdef, params)
        x = batch["video"]
        z = vae.encode(x)
        err = vae.decode(z) - x
        l2, l1 = jnp.mean(err ** 2), jnp.mean(jnp.abs(err))
        loss = l2 + l1 + self.cfg.train.latent_penalty * jnp.mean(z ** 2)
        return loss, {"l1": l1, "psnr": 10 * jnp.log10(4.0 / l2)}

    def step(self, state, consts, batch):
        state, loss, aux = self._update(state, self.loss, batch, self._key(state))
        return {**state, "step": state["step"] + 1}, {"loss": loss, **aux}

    def export(self, state, out_dir: str) -> None:
        import dataclasses
        from shotstream_jax.models.umt5 import UMT5Config, UMT5Encoder
        cfg, te = self.cfg, self.cfg.text_encoder
        params = jax.device_get(state["gen"])
        vae = nnx.merge(self.graphdef, params)
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
