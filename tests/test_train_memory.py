"""`--dry_run` per-chip memory of the 1.3B DMD step on 8 chips vs byte counts written out here.

References: parameter count of the abstract WanDiT x 4 bytes over the fsdp
shards (3 networks: generator, critic, teacher; AdamW: 2 moments for each of
the 2 trained ones), and the rollout's dominant residual, the dual K/V cache
of every chunk: 2 x chunks x layers x tokens x heads x head_dim x 2 bytes
(bf16), split over the context axis.
"""
import jax
import pytest
from flax import nnx

from shotstream_jax.config import get_config
from shotstream_jax.models.wan_dit import WanDiT, WanDiTConfig
from shotstream_jax.train import memory


def test_dmd_1_3b_on_8_chips():
    cfg = get_config("wan_1_3b", "dmd_intra")
    cfg.mesh.fsdp, cfg.mesh.context, cfg.train.batch_size = 4, 2, 4
    e = memory.estimate(cfg, chips=8)
    m = cfg.model
    n = sum(x.size for x in jax.tree.leaves(nnx.eval_shape(lambda: WanDiT(WanDiTConfig.from_dict(m),
                                                                           rngs=nnx.Rngs(0)))))
    assert e["parameters"] == pytest.approx(3 * n * 4 / 4, rel=0.02)
    assert e["optimiser"] == pytest.approx(2 * 2 * n * 4 / 4, rel=0.02)
    assert e["gradients"] == pytest.approx(n * 4 / 4, rel=0.02)
    s = cfg.shotstream
    tokens = (s.context_frames + s.shot_latent_frames) * (480 // 16) * (832 // 16)
    caches = 2 * (s.shot_latent_frames // s.chunk_frames) * m.num_layers * tokens * m.dim * 2 / 2
    assert caches <= e["activations"] <= 1.25 * caches
    assert e["examples_per_chip"] == 1
    assert e["total"] < 60e9, memory.report(cfg, chips=8)
