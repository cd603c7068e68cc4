"""Inter-shot DMD against the reference trainer's loop (trainer/distillation_frameconcat_streaming.py),
restated by hand here: every shot of the video is rolled out (shot 0 included) with one optimiser step
each (generator when step % (critic_steps + 1) == 0, else critic); shot i's context is the VAE
re-encoding, frame by frame, of pixel frames round(linspace) of the decoded earlier shots; shot 0's
context is six zero latents in RoPE shot 0; LoRA (4_dmd_long.yaml) on the generator and the critic, merged
into the exported generator as peft merges it (W + alpha / r A B)."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shotstream_jax import model_dir, sharding
from shotstream_jax.data import pipeline
from shotstream_jax.train import loop, stages
from tests.test_train_stages import small


def _adam_counts(opt_state):
    return [int(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(opt_state)
            if "count" in jax.tree_util.keystr(path)]


def test_inter_shot_rollout_updates_and_reencoded_context(tmp_path):
    cfg = small("dmd_inter", steps=1, batch_size=1, context_dropout=0.0)
    cfg.data.max_shots = 3
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    stage = stages.DmdInterStage(cfg, mesh)
    state, _ = stage.init_state()
    consts = stage.init_consts()
    batch = next(iter(pipeline.dataset(pipeline.source(cfg, str(tmp_path)), 1, seed=0)))
    assert int(batch["num_shots"][0]) == 3
    teacher = jax.tree.map(np.asarray, consts["real"])
    critic0 = jax.tree.map(np.asarray, state["critic"])
    video_step = jax.jit(stage.video_step)
    new, m, out = video_step(state, consts, batch)

    # Shot count and one optimiser step per shot: steps 0, 2 generator, step 1 critic.
    assert (int(m["shots"]), int(m["generator_updates"]), int(m["critic_updates"])) == (3, 2, 1)
    assert int(new["step"]) == 3
    assert set(_adam_counts(new["gen_opt"])) == {2} and set(_adam_counts(new["critic_opt"])) == {1}

    # LoRA on the critic: adapters over the teacher's frozen weights; the update moved only the adapters.
    assert sorted(new["critic"]) and all(k.startswith("blocks/") and set(v) == {"a", "b"}
                                         for k, v in new["critic"].items())
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, new["critic_frozen"]), teacher)
    assert any(np.abs(np.asarray(v["b"])).max() > 0 for v in new["critic"].values())
    assert all(np.abs(np.asarray(v["b"])).max() == 0 for v in critic0.values())
    assert all(k.startswith("blocks/") for k in new["gen"])

    # Context of every shot, by hand from the generated shots.
    vae = nnx.merge(stage.vae_graphdef, consts["vae"])
    shots = np.asarray(out["shots"][0])  # [3, T, h, w, C]
    pixels = [np.asarray(vae.decode(vae.cfg.denormalize(jnp.asarray(x))[None])[0]) for x in shots[:2]]
    n_px = pixels[0].shape[0]
    np.testing.assert_array_equal(np.asarray(out["context"][0, 0]), 0.0)
    np.testing.assert_array_equal(np.asarray(out["context_shot"][0, 0]), [0] * 6)
    for i, picks in ((1, [(0, f) for f in np.round(np.linspace(0, n_px - 1, 6))]),
                     (2, [(s, f) for s in (0, 1) for f in np.round(np.linspace(0, n_px - 1, 3))])):
        frames = np.stack([pixels[s][int(f)] for s, f in picks])
        want = np.concatenate([np.asarray(vae.cfg.normalize(vae.encode(jnp.asarray(f)[None, None]))[0])
                               for f in frames])
        np.testing.assert_allclose(np.asarray(out["context"][0, i]), want, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(out["context_shot"][0, i]), [s for s, _ in picks])
        # Taking the latents directly would differ: the VAE round trip is not the identity.
        direct = np.stack([shots[s][int(f) // 4] for s, f in picks])
        assert np.abs(want - direct).max() > 1e-2

    # A video of two shots: two updates, the third slot skipped (no empty-prompt padding).
    batch2 = dict(batch, num_shots=np.full_like(batch["num_shots"], 2))
    new2, m2, _ = video_step(new, consts, batch2)
    assert int(m2["shots"]) == 2 and int(new2["step"]) == 5
    assert all(np.isfinite(float(m2[k])) for k in ("loss", "generator_loss", "critic_loss", "grad_norm"))

    # The exported generator is the base model with the LoRA merged in (W + alpha/r A B).
    loop.export(stage.cfg, stage, new2, str(tmp_path / "export"))
    got = nnx.state(model_dir.load_dit(str(tmp_path / "export")), nnx.Param).to_pure_dict()
    path = "blocks/ffn/fc1"
    ab = new2["gen"][path]
    want = np.asarray(new2["gen_frozen"]["blocks"]["ffn"]["fc1"]["kernel"]) + \
        cfg.train.lora_alpha / cfg.train.lora_rank * np.einsum("lir,lro->lio", ab["a"], ab["b"])
    np.testing.assert_allclose(np.asarray(got["blocks"]["ffn"]["fc1"]["kernel"]), want, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(ab["b"])).max() > 0
