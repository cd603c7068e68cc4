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
