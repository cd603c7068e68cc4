"""`--dry_run` per-chip memory of the DMD step (1.3B on 8 chips, 14B on 64) vs byte counts written out here.

References: parameter count of the abstract WanDiT x 4 bytes over the fsdp
shards (3 networks: generator, critic, teacher; AdamW: 2 moments for each of
the 2 trained ones), and the generator step's dominant residuals, split over
the context axis: ONE dual K/V cache (the rollout's final cache, from which
the exit-step predictions are recomputed with gradient: 2 x layers x tokens x
dim x 2 bytes, bf16) and, remat keeping each block's input, the float32
residual stream entering every layer in each chunk's exit pass (chunks x
layers x chunk tokens x dim x 4 bytes).
"""
import jax
import pytest
from flax import nnx

from shotstream_jax.config import get_config
from shotstream_jax.models.wan_dit import WanDiT, WanDiTConfig
from shotstream_jax.train import memory


def _dmd_estimate(size, chips, fsdp, context):
    cfg = get_config(size, "dmd_intra")
    cfg.mesh.fsdp, cfg.mesh.context, cfg.train.batch_size = fsdp, context, fsdp
    e = memory.estimate(cfg, chips=chips)
    m, s = cfg.model, cfg.shotstream
    n = sum(x.size for x in jax.tree.leaves(nnx.eval_shape(lambda: WanDiT(WanDiTConfig.from_dict(m),
                                                                           rngs=nnx.Rngs(0)))))
    assert e["parameters"] == pytest.approx(3 * n * 4 / fsdp, rel=0.02)
    assert e["optimiser"] == pytest.approx(2 * 2 * n * 4 / fsdp, rel=0.02)
    assert e["gradients"] == pytest.approx(n * 4 / fsdp, rel=0.02)
    frame = (480 // 16) * (832 // 16)
    cache = 2 * m.num_layers * (s.context_frames + s.shot_latent_frames) * frame * m.dim * 2
    chunks = s.shot_latent_frames // s.chunk_frames
    layer_inputs = chunks * m.num_layers * s.chunk_frames * frame * m.dim * 4
    residuals = (cache + layer_inputs) / context
    assert residuals <= e["activations"] <= 1.15 * residuals
    assert e["examples_per_chip"] == 1
    return cfg, e


def test_dmd_1_3b_on_8_chips():
    cfg, e = _dmd_estimate("wan_1_3b", 8, fsdp=4, context=2)
    assert e["total"] < 60e9, memory.report(cfg, chips=8)


def test_dmd_14b_on_64_chips():
    cfg, e = _dmd_estimate("wan_14b", 64, fsdp=32, context=2)
    assert e["total"] < 80e9, memory.report(cfg, chips=64)


def test_latent_grid_follows_the_encoder_directorys_vae(tmp_path):
    """Reference: DiT tokens of one teacher example written out, (Fc + Ft) x (H / f / ph) x (W / f / pw),
    with the Wan VAE's f = 8 when no encoder directory is named and the 4x Shapes VAE's f = 4 when it is."""
    from shotstream_jax import model_dir, perf
    from shotstream_jax.models.wan_vae import WanVAE, WanVAEConfig
    cfg = get_config("shapes", "teacher")
    m, s, v = cfg.model, cfg.shotstream, cfg.video
    _, ph, pw = m.patch_size
    frames = s.context_frames + s.shot_latent_frames
    assert perf.train_example_flops(cfg)[1] == frames * (v.height // 8 // ph) * (v.width // 8 // pw)
    dit = WanDiT(WanDiTConfig.from_dict(m), rngs=nnx.Rngs(0))
    vae4x = WanVAE(WanVAEConfig(base_dim=8, dim_mult=(1, 2, 2), num_res_blocks=1, temporal_downsample=(True, True)),
                   rngs=nnx.Rngs(0))
    model_dir.save(str(tmp_path / "vae4x"), dit, vae=vae4x)
    cfg.data.encoder_dir = str(tmp_path / "vae4x")
    assert perf.train_example_flops(cfg)[1] == frames * (v.height // 4 // ph) * (v.width // 4 // pw)
    assert memory._example(cfg)["target"].shape == (s.shot_latent_frames, v.height // 4, v.width // 4,
                                                    m.in_channels)
    model_dir.save(str(tmp_path / "dit_only"), dit)
    cfg.data.encoder_dir = str(tmp_path / "dit_only")
    with pytest.raises(ValueError, match="holds no VAE"):
        perf.train_example_flops(cfg)
