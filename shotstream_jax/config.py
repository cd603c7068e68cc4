"""Experiment configs as code: one builder, read by the files in configs/.

`get_config(size, stage)` returns the full ConfigDict of a model size and a
training stage; each file under configs/<size>/<stage>.py is a thin recipe
calling it, and every field can be overridden on the command line
(`--config.train.lr=1e-5`, `--config.model.num_layers=2`).
"""
from __future__ import annotations

import dataclasses

import ml_collections

from shotstream_jax.models.wan_dit import WanDiTConfig

STAGES = ("teacher", "ode_pairs", "ode_init", "dmd_intra", "dmd_inter", "generate")
# Stages only some sizes have: "vae" trains a VAE and "text" teaches umT5 word order where no
# pretrained ones exist (configs/shapes).
EXTRA_STAGES = ("vae", "text")

# size -> (DiT size, DiT overrides, video (height, width)).
_SIZES = {
    # Small enough for CPU tests: 2 layers of width 64 on 32x32 frames.
    "toy": ("tiny", dict(text_dim=32, freq_dim=32, text_len=256), (32, 32)),
    # The Shapes world (data/shapes.py): 64x64 stories, word-level prompts of < 32 tokens.
    "shapes": ("tiny", dict(text_dim=64, freq_dim=64, text_len=32), (64, 64)),
    # remat: activations of one block at a time (model.remat_policy picks what is kept).
    "wan_1_3b": ("1.3B", dict(dtype="bfloat16", remat=True), (480, 832)),
    "wan_14b": ("14B", dict(dtype="bfloat16", remat=True), (480, 832)),
}


def model_config(size: str) -> ml_collections.ConfigDict:
    dit_size, overrides, _ = _SIZES[size]
    cfg = dataclasses.asdict(WanDiTConfig.from_size(dit_size, **overrides))
    # Wider and deeper than the toy: 4 layers of width 128, 4 heads of 32 (as many parameters as
    # 2 heads of 64, twice the cross-attention reads of the prompt per layer).
    if size == "shapes":
        cfg.update(dim=128, ffn_dim=384, num_heads=4, num_layers=4)
    cfg["patch_size"] = tuple(cfg["patch_size"])
    return ml_collections.ConfigDict(cfg)


def get_config(size: str = "toy", stage: str = "teacher") -> ml_collections.ConfigDict:
    if size not in _SIZES:
        raise ValueError(f"unknown size {size!r}; known: {sorted(_SIZES)}")
    if stage not in STAGES + EXTRA_STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {STAGES + EXTRA_STAGES}")
    toy = size == "toy"
    c = ml_collections.ConfigDict()
    c.size = size
    c.stage = stage
    c.model = model_config(size)

    h, w = _SIZES[size][2]
    c.video = ml_collections.ConfigDict(dict(height=h, width=w, fps=16, shot_frames=81))

    # ShotStream: next-shot context, chunking, shot-discontinuity RoPE, 4-step schedule.
    c.shotstream = ml_collections.ConfigDict(dict(
        context_frames=6,          # f_context: latent frames of history per shot
        chunk_frames=3,            # latent frames per causal chunk
        shot_latent_frames=21,     # 81 pixel frames
        shot_theta=1.0 / 6.0,      # RoPE phase per shot index
        shot_indicator=True,       # False: the paper's "w/o indicator" ablation
        # First shot's global cache: "zeros" (the public code's six all-zero context
        # latents in RoPE shot 0, attended to: what official weights were trained with)
        # or "masked" (an empty cache attended by nothing; an option for models trained here).
        first_shot_context="zeros",
        denoising_steps=(1000, 740, 500, 260),  # warped through the shift-8 schedule
        timestep_shift=8.0,
        num_train_timesteps=1000,
    ))

    if size == "shapes":  # 33-frame shots: 9 latent frames, three 3-frame chunks
        c.video.shot_frames = 33
        c.shotstream.shot_latent_frames = 9
        c.shotstream.first_shot_context = "zeros"   # what dmd_inter rolls the first shot out with
        # Shift 8 suits Wan's 60x104 latents; on 8x8 latents it leaves only 11% of training noise levels
        # below sigma 0.5, where a 2-latent-pixel character is decided. Shift 1 (uniform) keeps the
        # 4-step schedule's structure with steps at sigma 1, 0.74, 0.5, 0.26.
        c.shotstream.timestep_shift = 1.0

    # Device mesh (sharding.py); dcn_data: how many slices the data axis spans (multislice).
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, context=1, tensor=1, dcn_data=1))
    c.train = ml_collections.ConfigDict(dict(
        steps=10 if toy else 30000, batch_size=1, seed=0, lr=1e-5, warmup_steps=0, lr_decay="none",  # or "cosine"
        log_every=1, checkpoint_every=5 if toy else 500, keep_checkpoints=3,
        grad_accum=1,   # micro-batches per step: batch_size is the global batch whatever the device count
        # CFG's unconditional text: the reference's negative prompt, or "zeros" (what text dropout
        # trains) for a model trained from scratch, which never sees the negative prompt.
        uncond_text="zeros" if size == "shapes" else "negative_prompt"))
    c.data = ml_collections.ConfigDict(dict(
        manifest="",             # reference CSV; empty: a toy dataset is generated in the workdir
        latents_dir="",          # pre-encoded examples (shotstream_jax.data.preencode); wins over manifest
        # Keep pre-encoded examples and ODE pairs in host memory after their first read (Shapes: 85 + 260 MB).
        keep_in_memory=size == "shapes",
        # grain's reading threads; in-memory examples are dict lookups, and handing them between threads
        # only costs (Shapes, batch 32 on a 2-core CPU: 10.7 ms a batch with 2 threads, 4.1 ms with none).
        read_threads=0 if size == "shapes" else 2,
        encoder_dir="",          # full model dir whose VAE + umT5 encode videos/prompts (toy: TOY stand-ins)
        max_shots=5,             # prompt slots per example (videos have 2-5 shots)
        # Target shots keep their true length, cut down to the longest of these (latent frames)
        # that they fill: one compile per bucket. Shorter shots are skipped.
        length_buckets=(3, 6, 9, 12, 15, 18, 21),
        resize="stretch",        # stretch to height x width as the reference's reader, or "crop" (cover + centre crop)
        toy_videos=4,            # size of the generated toy dataset
        shuffle_seed=0))
    _add_stage(c, stage, toy)
    return c


def _add_stage(c: ml_collections.ConfigDict, stage: str, toy: bool) -> None:
    """Stage recipe (DESIGN.md sections 5 and 8; tools/train/config/*.yaml of the reference)."""
    t = c.train
    t.b1, t.b2 = 0.0, 0.999
    t.weight_decay = 0.01
    t.clip_norm = 10.0
    t.trainable = "all"              # all | self_attn | lora
    t.critic_trainable = "all"       # the critic's: all | lora
    t.lora_rank, t.lora_alpha = (4, 4.0) if toy else (256, 256.0)
    t.context_dropout = 0.0
    t.text_dropout = 0.0
    t.guidance_scale = 3.0           # real score: cond + 3 (cond - uncond) = CFG 4
    t.critic_steps = 5               # critic updates per generator update
    t.lr_critic = 4e-7
    t.clip_norm_critic = 10.0
    t.min_t, t.max_t = 20.0, 980.0   # DMD timestep clamp
    t.ode_steps = 10 if toy else 50  # teacher sampling steps for ODE pairs
    t.ode_guidance = 6.0
    t.ode_examples = 0               # ODE pairs for the first N examples of the data only; 0: all
    t.num_shots = 2                  # dmd_inter: fewest shots a training video needs (all its shots are rolled out)
    t.teacher_dir = ""               # model dir of the bidirectional teacher (real score, critic init)
    t.init_dir = ""                  # model dir the trained network starts from
    t.ode_dir = ""                   # ODE pairs written by the ode_pairs stage
    if stage == "vae":
        # A Wan-architecture VAE trained by reconstruction (train/stages.py VaeStage); its export is a full
        # model directory (with the frozen text encoder and tokenizer below) for data.encoder_dir.
        t.lr, t.b1, t.weight_decay, t.clip_norm = 1e-3, 0.9, 0.0, 1.0
        t.clip_frames = 5            # pixel frames per training clip (1 + 4k): one lone frame, one group of 4
        t.latent_penalty = 1e-4      # keeps the posterior means near unit scale
        t.foreground_weight = 0.0    # > 0: the error on what stands out of each frame counts more (VaeStage.loss)
        t.stats_batches = 16         # batches encoded at export to fit the latents' mean/std
        t.decoder_only = False       # train the decoder alone on init_dir's fixed encoder (VaeStage)
        c.vae = ml_collections.ConfigDict(dict(base_dim=8, z_dim=16, dim_mult=(1, 2, 2, 2), num_res_blocks=1,
                                               temporal_downsample=(False, True, True)))
        # umT5-architecture encoder, random (the recipe never trains umT5; the text stage teaches it word order).
        c.text_encoder = ml_collections.ConfigDict(dict(
            tokenizer="",            # tokenizer.json path (data/shapes.py writes the world's); empty: bytes
            num_layers=2, num_heads=2, d_ff=128, num_buckets=32, max_distance=128, seed=7))
    elif stage == "text":
        # train/stages.py TextStage: umT5 of train.init_dir learns to predict the words around each token.
        t.lr, t.b1, t.weight_decay, t.clip_norm = 1e-3, 0.9, 0.0, 1.0
        t.text_offsets = (-2, -1, 0, 1, 2)   # 0: each token keeps its own word
    elif stage == "teacher":
        t.lr, t.trainable = 1e-5, "self_attn"
        t.context_dropout = t.text_dropout = 0.1
        t.foreground_weight = 0.0    # > 0: the flow loss favours what stands out of each frame (teacher.foreground_weights)
        t.copy_frame = 0.0           # > 0: that share of examples see the target's first frame as context (stages.copy_frame)
        t.cue_frame = 0.0            # > 0: that share of examples see their cue frame as context (stages.cue_frame)
        t.cue_level = 0              # which cue (data/shapes_cues.py CUE_SHIFTS): 0 at the target's place .. 3 anywhere
        t.random_copy = 0.0          # > 0: that share of examples are the pure copy task on noise frames (stages.random_copy)
        t.random_copy_patch = 0      # > 0: in those examples only a square of up to this many latent pixels a side is copied
    elif stage == "ode_init":
        t.lr, t.clip_norm = 1e-6, 1.0
        t.text_dropout = 0.1
    elif stage in ("dmd_intra", "dmd_inter"):
        t.lr, t.clip_norm = 2e-6, 1.0
        t.context_dropout = 0.1
        if stage == "dmd_inter":
            # 4_dmd_long.yaml: LoRA rank 256, alpha 256 on every block Linear of generator and critic.
            t.trainable = t.critic_trainable = "lora"
