"""The Shapes model family: the vae training stage and the default-model loader.

References: the reconstruction loss written out in the test on a freshly built WanVAE, latent
statistics recomputed from the exported VAE, the world tokenizer through text.Tokenizer, and a
model directory written in the test for the loader."""
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from shotstream_jax import ShotStream, default_model, model_dir
from shotstream_jax.config import get_config
from shotstream_jax.data import shapes
from shotstream_jax.models.wan_vae import WanVAE, WanVAEConfig


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """A 2-step vae stage on 16x16 Shapes stories (a narrow VAE), through the ordinary training loop."""
    from shotstream_jax.train import loop
    tmp = tmp_path_factory.mktemp("vae")
    cfg = get_config("shapes", "vae")
    cfg.video.height = cfg.video.width = 16
    cfg.vae.base_dim = 4
    cfg.model.update(dim=32, ffn_dim=64, num_layers=1)   # the export's untrained DiT: small and quick to build
    cfg.train.update(steps=2, checkpoint_every=1, stats_batches=2)
    cfg.data.manifest = shapes.write_dataset(str(tmp / "data"), num_stories=2, seed=5, size=16)
    cfg.text_encoder.tokenizer = str(tmp / "data" / "tokenizer.json")
    loop.train(cfg, str(tmp / "run"), progress=False)
    return cfg, tmp / "run"


@pytest.mark.heavy   # compiles a VAE's gradient: minutes on a shared 2-core CPU
def test_vae_stage_loss_is_the_reconstruction_formula(vae_run):
    """Reference: mean((D(E(x)) - x)^2) + mean|D(E(x)) - x| + penalty mean(E(x)^2) on WanVAE(seed)."""
    from shotstream_jax import sharding
    from shotstream_jax.train import stages
    cfg, workdir = vae_run
    stage = stages.VaeStage(cfg, sharding.make_mesh(cfg.mesh))
    src = stage.source(str(workdir))
    batch = {"video": src[0]["video"][None]}
    vae = WanVAE(WanVAEConfig(**{k: tuple(v) if isinstance(v, tuple) else v for k, v in cfg.vae.to_dict().items()}),
                 rngs=nnx.Rngs(cfg.train.seed))
    got, _ = jax.jit(stage.loss)(nnx.state(vae).to_pure_dict(), batch)
    x = jnp.asarray(batch["video"])
    z = vae.encode(x)
    err = vae.decode(z) - x
    want = jnp.mean(err ** 2) + jnp.mean(jnp.abs(err)) + cfg.train.latent_penalty * jnp.mean(z ** 2)
    assert float(got) == pytest.approx(float(want), rel=1e-4)
    lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
    assert [l["step"] for l in lines] == [1, 2] and all(np.isfinite(l["loss"]) for l in lines)


@pytest.mark.heavy
def test_vae_stage_foreground_weight_is_the_weighted_formula(vae_run):
    """Reference, in numpy: each pixel's squared + absolute error weighted by 1 + 2 d^2 / mean(d^2), d its
    RGB distance from its frame's per-channel median, normalised by the weights' sum (x 3 channels)."""
    from shotstream_jax import sharding
    from shotstream_jax.train import stages
    cfg, workdir = vae_run
    cfg = cfg.copy_and_resolve_references()
    cfg.train.foreground_weight = 2.0
    stage = stages.VaeStage(cfg, sharding.make_mesh(cfg.mesh))
    stage.source(str(workdir))
    x = np.asarray(stage.src[0]["video"][None], np.float64)
    vae = WanVAE(WanVAEConfig(**{k: tuple(v) if isinstance(v, tuple) else v for k, v in cfg.vae.to_dict().items()}),
                 rngs=nnx.Rngs(cfg.train.seed))
    got, aux = jax.jit(stage.loss)(nnx.state(vae).to_pure_dict(), {"video": x.astype(np.float32)})
    z = np.asarray(vae.encode(jnp.asarray(x, jnp.float32)), np.float64)
    err = np.asarray(vae.decode(jnp.asarray(z, jnp.float32)), np.float64) - x
    d2 = ((x - np.median(x, axis=(2, 3), keepdims=True)) ** 2).sum(-1, keepdims=True)
    w = 1 + 2.0 * d2 / d2.mean(axis=(2, 3), keepdims=True)
    assert w.max() > 3                                   # the clip has a character that stands out
    want = (w * (err ** 2 + np.abs(err))).sum() / (w.sum() * 3) + cfg.train.latent_penalty * (z ** 2).mean()
    assert float(got) == pytest.approx(want, rel=1e-4)
    assert float(aux["l1"]) == pytest.approx(np.abs(err).mean(), rel=1e-4)


@pytest.mark.heavy
def test_vae_export_is_a_full_model_directory_with_fitted_latent_stats(vae_run):
    """Reference: mean/std of the exported VAE's latents of the first clips; the world tokenizer; load_pipeline."""
    from shotstream_jax.text import shot_prompt
    from shotstream_jax.train import stages
    cfg, workdir = vae_run
    config, dit, vae, text = model_dir.load_pipeline(str(workdir / "export"))
    src = stages.VideoClipSource(stages.pipeline.manifest.read_manifest(cfg.data.manifest, 1)[0], cfg)
    z = np.concatenate([np.asarray(vae.encode(jnp.asarray(src[i]["video"][None]))).reshape(-1, 16) for i in (0, 1)])
    np.testing.assert_allclose(vae.cfg.latents_mean, z.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(vae.cfg.latents_std, z.std(0), rtol=1e-3, atol=1e-5)
    story = shapes.make_story(5, 0)
    ids, mask = text.tokenize(shot_prompt(story.global_caption, 1, story.shots[1].caption))
    assert 2 not in ids[mask > 0]                     # no <unk>: every word is in the vocabulary
    assert text.encode("wide shot of a red circle standing still on a blue background").shape == (1, 32, 64)
    assert (config.video.height, config.shotstream.shot_latent_frames, dit.cfg.text_dim) == (16, 9, 64)


@pytest.mark.heavy
def test_vae_decoder_only_keeps_the_encoder_and_the_model_directory(vae_run, tmp_path):
    """Reference: the init_dir model directory itself. Two decoder-only steps leave its encoder, quant
    conv, latent statistics, DiT, text encoder and tokenizer exactly as they were and change the decoder;
    without an init_dir there is no encoder to keep, one clear error."""
    from shotstream_jax import sharding
    from shotstream_jax.train import loop, stages
    cfg, workdir = vae_run
    cfg = cfg.copy_and_resolve_references()
    cfg.train.update(decoder_only=True, init_dir=str(workdir / "export"), lr=1e-2)
    loop.train(cfg, str(tmp_path / "run"), progress=False)
    _, dit0, vae0, text0 = model_dir.load_pipeline(str(workdir / "export"))
    _, dit1, vae1, text1 = model_dir.load_pipeline(str(tmp_path / "run" / "export"))
    before, after = nnx.state(vae0).to_pure_dict(), nnx.state(vae1).to_pure_dict()
    for name in ("encoder", "quant_conv"):
        jax.tree.map(np.testing.assert_array_equal, after[name], before[name])
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after["decoder"]),
                                                        jax.tree.leaves(before["decoder"])))
    assert (vae1.cfg.latents_mean, vae1.cfg.latents_std) == (vae0.cfg.latents_mean, vae0.cfg.latents_std)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(dit1).to_pure_dict(), nnx.state(dit0).to_pure_dict())
    jax.tree.map(np.testing.assert_array_equal, nnx.state(text1.model).to_pure_dict(),
                 nnx.state(text0.model).to_pure_dict())
    assert (tmp_path / "run" / "export" / "tokenizer.json").read_text() == \
        (workdir / "export" / "tokenizer.json").read_text()
    cfg.train.init_dir = ""
    with pytest.raises(ValueError, match="decoder_only needs train.init_dir"):
        stages.VaeStage(cfg, sharding.make_mesh(cfg.mesh))


def test_roundtrip_scores_each_shot_through_the_vae_alone(tmp_path):
    """Reference: each shot of the story's own video encoded and decoded alone by the model directory's
    VAE, written through the same video writer and read back."""
    from shotstream_jax.eval import shapes as eval_shapes
    from shotstream_jax.pipeline import from_uint8, to_uint8
    from shotstream_jax.video_io import VideoWriter, read_video
    shapes.write_dataset(str(tmp_path / "w"), num_stories=1, seed=3, size=16, prefixes=False)
    config, dit, vae, text = default_model.build()
    model_dir.save(str(tmp_path / "m"), dit, vae=vae, text_model=text.model, tokenizer="bytes", config=config)
    stories = str(tmp_path / "w" / "stories.json")
    eval_shapes.roundtrip_videos(str(tmp_path / "m"), stories, str(tmp_path / "rt"))
    story = eval_shapes.load_stories(stories)[0]
    truth, fps = read_video(str(tmp_path / "w" / story["video"]))
    n = len(truth) // len(story["shots"])
    with VideoWriter(str(tmp_path / "ref.mp4"), fps=round(fps)) as w:
        for i in range(len(story["shots"])):
            w.write(np.asarray(to_uint8(vae.decode(vae.encode(from_uint8(jnp.asarray(truth[i * n:(i + 1) * n]))[None]))[0])))
    got, want = read_video(str(tmp_path / "rt" / story["video"]))[0], read_video(str(tmp_path / "ref.mp4"))[0]
    assert got.shape == truth.shape
    assert np.abs(got.astype(int) - want).mean() < 1.0
    metrics = eval_shapes.evaluate(stories, str(tmp_path / "rt"))
    assert metrics["background_n"] == len(story["shots"])


def test_default_model_is_the_shipped_directory_when_present(tmp_path, monkeypatch):
    """Reference: a model directory written here; without one the toy model of default_model.build()."""
    monkeypatch.setattr(default_model, "SHIPPED", str(tmp_path / "none"))
    toy = default_model.build()
    monkeypatch.setattr(default_model, "build", lambda **kw: toy)
    assert default_model.load() is toy
    config, dit, vae, text = toy
    config.video.height = config.video.width = 64    # marks the directory's own config
    model_dir.save(str(tmp_path / "shipped"), dit, vae=vae, text_model=text.model, tokenizer="bytes", config=config)
    monkeypatch.setattr(default_model, "SHIPPED", str(tmp_path / "shipped"))
    pipe = ShotStream.load()
    assert (pipe.height, pipe.width, pipe.fps) == (64, 64, 16)


def _three_shot_story():
    return next(s for s in (shapes.make_story(3, i, size=16) for i in range(50)) if len(s.shots) >= 3)


def test_teacher_story_builds_every_shot_as_training_does():
    """Reference: the examples written out here from the story's own earlier shots (frames picked by
    context.sample_context, each encoded alone; prompts by text.shot_prompt), and the first shot in the
    context-dropout form (zero context, RoPE shot 0). The stand-in sampler returns a latent that the
    stand-in decoder maps to the world's ground-truth shot, so the history the teacher sees is known."""
    from shotstream_jax import context
    from shotstream_jax.eval import shapes as eval_shapes
    from shotstream_jax.text import shot_prompt
    story = _three_shot_story()
    gt = shapes.render_story(story, shot_frames=9, size=16)
    cfg = get_config("shapes", "ode_pairs")
    cfg.model.update(text_len=4, text_dim=3)
    seen = []

    def sample_shot(ex, key):
        seen.append(ex)
        return len(seen) - 1

    encode_video = lambda v: v[:, :1, :2, :2, :1].sum(axis=(2, 3))[:, :, None, None] + 1000.0   # a batch of videos
    encode_text = lambda prompts: np.asarray([[[len(p), i, 7]] * 4 for i, p in enumerate(prompts)], np.float32)
    decode = lambda k: gt[k * 9:(k + 1) * 9].astype(np.float32) / 127.5 - 1.0
    captions = [s.caption for s in story.shots]
    out = eval_shapes.teacher_story(cfg, sample_shot, encode_video, encode_text, decode, story.global_caption,
                                    captions, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.concatenate(out), gt)
    assert seen[0]["context"] is None and (seen[0]["context_shot"] == 0).all() and seen[0]["target_shot"] == 0
    for k, ex in enumerate(seen):
        for i, c in enumerate(captions):
            assert ex["text"][i, 0].tolist() == [len(shot_prompt(story.global_caption, i, c)), i, 7]
        assert not ex["text"][len(captions):].any()
        if k == 0:
            continue
        picks = context.sample_context([9] * k, cfg.shotstream.context_frames)
        frames = np.stack([gt[9 * shot + i] for shot, i in picks]).astype(np.float32) / 127.5 - 1.0
        np.testing.assert_allclose(ex["context"][:, 0, 0, 0], frames[:, :2, :2, 0].sum(axis=(1, 2)) + 1000.0,
                                   rtol=1e-6)
        assert ex["context_shot"].tolist() == [shot for shot, _ in picks] and ex["target_shot"] == k


def test_teacher_story_without_global_context_draws_every_shot_as_a_first_shot():
    """The teacher's memory ablation: every shot gets the first shot's context-dropout form (no context
    latents, RoPE shot 0) while its own prompt and the story's prompts stay as with memory."""
    from shotstream_jax.eval import shapes as eval_shapes
    story = _three_shot_story()
    cfg = get_config("shapes", "ode_pairs")
    cfg.model.update(text_len=4, text_dim=3)
    encode_text = lambda prompts: np.asarray([[[len(p), i, 7]] * 4 for i, p in enumerate(prompts)], np.float32)
    captions = [s.caption for s in story.shots]

    def examples(global_context):
        seen = []
        eval_shapes.teacher_story(cfg, lambda ex, key: seen.append(ex) or 0, lambda v: v[:, :1, :1, :1] + 0.0,
                                  encode_text, lambda k: np.zeros((9, 16, 16, 3), np.float32), story.global_caption,
                                  captions, jax.random.PRNGKey(0), global_context=global_context)
        return seen

    with_memory, without = examples(True), examples(False)
    assert [ex["context"] is None for ex in with_memory] == [True] + [False] * (len(captions) - 1)
    assert len(without) == len(captions)
    for k, (ex, ref) in enumerate(zip(without, with_memory)):
        assert ex["context"] is None and (ex["context_shot"] == 0).all() and ex["target_shot"] == k
        np.testing.assert_array_equal(ex["text"], ref["text"])


def test_teacher_videos_are_written_and_scored(tmp_path, caplog):
    """End to end on a random toy-sized teacher and VAE: one video per story, of the story's length, then
    scored by `evaluate` (random weights: only that it runs through and counts every shot). The teacher
    is built as its own config.json says, not as the config's model section (here: other heads), and
    its sampler compiles once for all shots (the first one, without history, included)."""
    from shotstream_jax.eval import shapes as eval_shapes
    config, dit, vae, text = default_model.build()
    model_dir.save(str(tmp_path / "m"), dit, vae=vae, text_model=text.model, tokenizer="bytes", config=config)
    story = _three_shot_story()
    stories = tmp_path / "stories.json"
    stories.write_text(json.dumps({"stories": [{"video": "s.mp4", "global_caption": story.global_caption,
                                                "shots": [s.caption for s in story.shots]}]}))
    cfg = get_config("toy", "ode_pairs")
    cfg.model = config.model.copy_and_resolve_references()
    cfg.model.num_heads *= 2
    cfg.train.update(teacher_dir=str(tmp_path / "m"), ode_steps=2, uncond_text="zeros")
    cfg.data.encoder_dir = str(tmp_path / "m")
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        eval_shapes.generate_teacher_videos(cfg, str(stories), str(tmp_path / "v"))
    assert len([r for r in caplog.records if "Compiling jit(teacher_sample)" in r.getMessage()]) == 1
    from shotstream_jax.video_io import read_video
    frames, _ = read_video(str(tmp_path / "v" / "s.mp4"))
    assert frames.shape == (len(story.shots) * config.video.shot_frames, config.video.height, config.video.width, 3)
    metrics = eval_shapes.evaluate(str(stories), str(tmp_path / "v"))
    assert metrics["background_n"] == len(story.shots)


def test_vae_stage_goes_on_from_a_model_directory(tmp_path):
    """Reference: the VAE saved in a model directory here; vae_shots starts from its weights (and Adam
    from zero moments), and a folder without a VAE fails with one clear error."""
    from shotstream_jax import sharding
    from shotstream_jax.train import stages
    config, dit, vae, text = default_model.build()
    model_dir.save(str(tmp_path / "m"), dit, vae=vae, text_model=text.model, tokenizer="bytes", config=config)
    cfg = get_config("shapes", "vae")
    cfg.vae.update(base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1)
    cfg.train.init_dir = str(tmp_path / "m")
    state, _ = stages.VaeStage(cfg, sharding.make_mesh(cfg.mesh)).init_state()
    want = nnx.state(vae).to_pure_dict()
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["gen"]), want)
    assert not any(np.asarray(m).any() for m in jax.tree.leaves(state["gen_opt"]) if np.ndim(m) > 0)
    cfg.train.init_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="no vae/"):
        stages.VaeStage(cfg, sharding.make_mesh(cfg.mesh)).init_state()


def test_the_shipped_default_model_draws_a_two_shot_story():
    """Reference: the captions, read back from the decoded pixels by eval/shapes.read_shot (which scores the
    world's ground truth 1.0): the package's default model is the trained Shapes-world student, and the
    backgrounds of held-out story 26 (data/shapes.py seed 1, never trained on) are its captions' (the
    shipped student gets all 175 held-out backgrounds right; benchmarks/RESULTS.md)."""
    import os
    from shotstream_jax.eval import shapes as eval_shapes
    assert os.path.isfile(os.path.join(default_model.SHIPPED, "config.json")), "no trained default model shipped"
    story = shapes.make_story(1, 26)
    assert story.global_caption == "Characters in several shots."
    pipe = ShotStream.load()
    assert (pipe.height, pipe.width, pipe.fps) == (64, 64, 16)
    session = pipe.session(story.global_caption, seed=0)
    for shot in story.shots[:2]:
        frames = np.concatenate(list(session.next_shot(shot.caption)))
        assert frames.shape == (33, 64, 64, 3)
        assert eval_shapes.read_shot(frames)["background"] == shapes.parse_caption(shot.caption)["background"]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A model directory with the world tokenizer and a random tiny umT5, then 600 text-stage steps on the
    prompts of 30 Shapes stories through the ordinary training loop."""
    from shotstream_jax.models.umt5 import UMT5Config, UMT5Encoder
    from shotstream_jax.train import loop
    tmp = tmp_path_factory.mktemp("text")
    manifest = shapes.write_dataset(str(tmp / "data"), num_stories=30, seed=5, size=16)
    tok = str(tmp / "data" / "tokenizer.json")
    config, dit, vae, _ = default_model.build()
    vocab = len(shapes.vocabulary()) + 3
    t5 = UMT5Encoder(UMT5Config.from_size("tiny", vocab_size=vocab, d_model=dit.cfg.text_dim, d_kv=dit.cfg.text_dim // 4),
                     rngs=nnx.Rngs(7))
    model_dir.save(str(tmp / "m"), dit, vae=vae, text_model=t5, tokenizer=tok, config=config)
    cfg = get_config("shapes", "text")
    cfg.data.manifest = manifest
    cfg.train.update(init_dir=str(tmp / "m"), steps=600, batch_size=16, checkpoint_every=600)
    loop.train(cfg, str(tmp / "run"), progress=False)
    return cfg, tmp


@pytest.mark.heavy   # the fixture trains 600 steps and loads two model directories: minutes on a shared 2-core CPU
def test_text_stage_loss_is_the_word_context_cross_entropy(text_run):
    """Reference: the cross-entropy of the words at offsets -2..2 of every prompt token, written out with numpy
    loops over the encoder's outputs (positions past the prompt or outside it are not counted)."""
    from shotstream_jax import sharding
    from shotstream_jax.train import stages
    cfg, tmp = text_run
    stage = stages.TextStage(cfg, sharding.make_mesh(cfg.mesh))
    state, _ = stage.init_state()
    params = jax.device_get(state["gen"])
    params["heads"] = np.random.default_rng(0).normal(size=params["heads"].shape).astype(np.float32)
    ex = stage.source(str(tmp))[3]
    ids, mask = ex["ids"][None], ex["mask"][None]
    got, aux = jax.jit(stage.loss)(params, {"ids": ids, "mask": mask})
    h = np.asarray(stage.text_encoder.model(jnp.asarray(ids), jnp.asarray(mask)))[0]
    n = int(mask.sum())
    total, count = 0.0, 0
    for k, o in enumerate(cfg.train.text_offsets):
        for i in range(n):
            if 0 <= i + o < n:
                logits = h[i] @ params["heads"][k]
                total += np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - logits[ids[0, i + o]]
                count += 1
    assert float(got) == pytest.approx(total / count, rel=1e-4)
    assert 0.0 <= float(aux["accuracy"]) <= 1.0


@pytest.mark.heavy
def test_text_stage_teaches_the_encoder_which_colour_is_the_background(text_run):
    """Reference: the random encoder's outputs for `red` as a character's colour and as the background are
    nearly alike (so a DiT cannot tell the two colour words of a first shot apart); after the stage they
    differ, the word itself is kept, and the export is the source directory with only umT5 replaced."""
    from shotstream_jax.text import shot_prompt
    cfg, tmp = text_run
    lines = [json.loads(l) for l in open(tmp / "run" / "metrics.jsonl")]
    assert lines[-1]["step"] == 600 and lines[-1]["accuracy"] > 0.9 > lines[0]["accuracy"]

    def outputs(path):
        _, dit, vae, text = model_dir.load_pipeline(str(path))
        a = shot_prompt("A story about one character.", 0, "wide shot of a red circle moving right on a blue background")
        b = shot_prompt("A story about one character.", 0, "wide shot of a blue circle moving right on a red background")
        ia, ib = text.tokenize(a)[0], text.tokenize(b)[0]
        char, bg = np.flatnonzero(ia != ib)
        ea, eb = np.asarray(text.encode([a]))[0], np.asarray(text.encode([b]))[0]
        cos = lambda x, y: float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))
        return cos(ea[char], eb[bg]), cos(ea[char], eb[char]), dit, vae

    role_before, _, dit0, vae0 = outputs(tmp / "m")
    role_after, colour_after, dit1, vae1 = outputs(tmp / "run" / "export")
    assert role_before > 0.9 and role_after < role_before - 0.25   # measured: 0.98 -> 0.65
    assert colour_after < 0.95          # `red circle` and `blue circle` still differ
    for a, b in ((dit0, dit1), (vae0, vae1)):
        jax.tree.map(np.testing.assert_array_equal, nnx.state(a).to_pure_dict(), nnx.state(b).to_pure_dict())
    assert model_dir._meta(str(tmp / "run" / "export"))["tokenizer"] == "tokenizer.json"


def test_text_stage_needs_a_model_directory():
    from shotstream_jax import sharding
    from shotstream_jax.train import stages
    cfg = get_config("shapes", "text")
    with pytest.raises(ValueError, match="init_dir"):
        stages.TextStage(cfg, sharding.make_mesh(cfg.mesh))


def _memory_examples(n: int, size: int = 32):
    """Pixel stand-ins of pre-encoded `the same character` examples ([-1, 1] frames as 'latents'): the
    story's first shot as context, its second (a `the same character` shot) as target."""
    out = []
    for story in (shapes.make_story(7, i, size=size) for i in range(400)):
        if len(story.shots) >= 2 and shapes.resolve_captions([s.caption for s in story.shots])[1]["same"]:
            gt = shapes.render_story(story, shot_frames=6, size=size).astype(np.float32) / 127.5 - 1.0
            text = np.zeros((5, 2, 3), np.float32)
            text[:len(story.shots), :, 0] = np.arange(len(story.shots))[:, None] + 10 * len(out)
            out.append(dict(context=gt[:6], context_shot=np.zeros(6, np.int32), target=gt[6:12],
                            target_shot=np.int32(1), text=text, colour=story.shots[0].colour,
                            backgrounds=(story.shots[0].background, story.shots[1].background)))
            if len(out) == n:
                return out
    raise AssertionError("the world has too few stories whose second shot is `the same character`")


def test_swap_probe_tells_a_teacher_that_reads_its_context_from_one_that_does_not():
    """Reference: stand-in teachers whose answers are known. One copies its context frames wholesale (it
    shows the context's character, and starts on the context's background), one starts on its last context
    frame and then draws the ground truth (no cut), one draws the ground truth whatever the context (no
    memory), one draws a black frame (no character)."""
    from shotstream_jax.eval import shapes_memory
    examples = _memory_examples(8)
    assert len({ex["colour"] for ex in examples}) > 1
    same_background = np.mean([a == b for a, b in (ex["backgrounds"] for ex in examples)])
    assert same_background < 1
    identity = lambda frames: frames
    copies = shapes_memory.swap_probe(examples, lambda ex, key: ex["context"], identity, jax.random.PRNGKey(0))
    assert copies == dict(own=1.0, swap_keeps=0.0, swap_takes=1.0, drawn=1.0, cut=same_background, n=8,
                          skipped=0)
    starts_on_context = lambda ex, key: np.concatenate([ex["context"][-1:], ex["target"][1:]])
    starts = shapes_memory.swap_probe(examples, starts_on_context, identity, jax.random.PRNGKey(0))
    assert starts == dict(own=1.0, swap_keeps=1.0, swap_takes=0.0, drawn=1.0, cut=same_background, n=8, skipped=0)
    ignores = shapes_memory.swap_probe(examples, lambda ex, key: ex["target"], identity, jax.random.PRNGKey(0))
    assert ignores == dict(own=1.0, swap_keeps=1.0, swap_takes=0.0, drawn=1.0, cut=1.0, n=8, skipped=0)
    blank = shapes_memory.swap_probe(examples, lambda ex, key: -np.ones_like(ex["target"]), identity,
                                     jax.random.PRNGKey(0))
    black = np.mean([ex["backgrounds"][1] == "black" for ex in examples])   # (0, 0, 0) reads as black
    assert blank == dict(own=0.0, swap_keeps=0.0, swap_takes=0.0, drawn=0.0, cut=black, n=8, skipped=0)


def test_swap_context_keeps_the_target_prompt_and_takes_the_partner_history():
    """Reference: the swapped example written out field by field."""
    from shotstream_jax.eval import shapes_memory
    ex, other = _memory_examples(2)
    other = dict(other, target_shot=np.int32(2), context_shot=np.asarray([0, 0, 0, 1, 1, 1], np.int32))
    s = shapes_memory.swap_context(ex, other)
    np.testing.assert_array_equal(s["context"], other["context"])
    np.testing.assert_array_equal(s["target"], ex["target"])
    assert s["context_shot"].tolist() == [0, 0, 0, 1, 1, 1] and s["target_shot"] == 2
    np.testing.assert_array_equal(s["text"][[0, 1, 3, 4]], other["text"][[0, 1, 3, 4]])
    np.testing.assert_array_equal(s["text"][2], ex["text"][1])
    assert other["text"][2, 0, 0] != ex["text"][1, 0, 0]


def test_same_character_examples_are_the_manifest_rows_whose_last_shot_says_so(tmp_path):
    """Reference: the stories file's captions, row by row as write_dataset's prefixes lay them out."""
    from shotstream_jax import checkpoint
    from shotstream_jax.eval import shapes_memory
    manifest = shapes.write_dataset(str(tmp_path / "data"), num_stories=6, seed=5, size=16)
    stories = json.loads((tmp_path / "data" / "stories.json").read_text())["stories"]
    last = [s["shots"][n - 1] for s in stories for n in range(2, len(s["shots"]) + 1)]
    (tmp_path / "lat").mkdir()
    checkpoint.write_json(str(tmp_path / "lat" / "index.json"), dict(manifest=manifest, examples=len(last),
                                                                       skipped=0))
    want = [i for i, c in enumerate(last) if c.startswith(("wide shot of the same", "close-up of the same"))]
    assert want and shapes_memory.same_character_examples(str(tmp_path / "lat")) == want
    checkpoint.write_json(str(tmp_path / "lat" / "index.json"), dict(manifest=manifest, examples=len(last) - 1,
                                                                       skipped=1))
    with pytest.raises(ValueError, match="no longer line up"):
        shapes_memory.same_character_examples(str(tmp_path / "lat"))
    with pytest.raises(ValueError, match="not a pre-encoded world"):
        shapes_memory.same_character_examples(str(tmp_path / "data"))
