"""Config files: the Wan sizes in DESIGN.md section 2, and command-line overrides through absl."""
import textwrap

import pytest

from shotstream_jax.config import STAGES, get_config
from shotstream_jax.models.wan_dit import WanDiTConfig
from tests.conftest import run_python


def test_wan_sizes_match_the_paper():
    m = get_config("wan_1_3b").model
    assert (m.dim, m.ffn_dim, m.num_heads, m.num_layers) == (1536, 8960, 12, 30)
    assert (m.freq_dim, m.text_dim, m.text_len, tuple(m.patch_size), m.eps) == (256, 4096, 512, (1, 2, 2), 1e-6)
    assert WanDiTConfig.from_dict(m).head_dim == 128
    m = get_config("wan_14b").model
    assert (m.dim, m.ffn_dim, m.num_heads, m.num_layers) == (5120, 13824, 40, 40)


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_file_loads(stage):
    from ml_collections import config_flags  # noqa: F401  (the loader the CLIs use)
    import importlib.util
    for size in ("toy", "wan_1_3b", "wan_14b"):
        spec = importlib.util.spec_from_file_location("c", f"configs/{size}/{stage}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        assert mod.get_config().stage == stage


def test_overrides_from_command_line(tmp_path):
    script = tmp_path / "show.py"
    script.write_text(textwrap.dedent("""
        from absl import app
        from shotstream_jax.cli.common import config, define_config_flag
        define_config_flag()
        def main(_):
            c = config()
            print(c.model.num_layers, c.train.lr, c.mesh.fsdp)
        app.run(main)
    """))
    r = run_python(str(script), "--config=configs/toy/teacher.py",
                   "--config.model.num_layers=3", "--config.train.lr=0.5", "--config.mesh.fsdp=8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3", "0.5", "8"]
    r = run_python(str(script), "--config=configs/toy/teacher.py", "--config.model.no_such_field=1")
    assert r.returncode != 0 and "no_such_field" in r.stderr


# The published recipe, read off KlingAIResearch/ShotStream tools/train/config/{1_basemodel,2_ode_init,3_dmd,
# 4_dmd_long,default_config}.yaml and its trainers (dropout rates, dfake_gen_update_ratio 6 = 1 generator
# update per 5 critic updates, max_grad_norm_critic default 10, min/max step 0.02/0.98 of 1000).
PUBLISHED = {
    "teacher": dict(lr=1e-5, b1=0.0, b2=0.999, weight_decay=0.01, clip_norm=10.0, trainable="self_attn",
                    context_dropout=0.1, text_dropout=0.1, steps=30000),
    "ode_init": dict(lr=1e-6, b1=0.0, b2=0.999, weight_decay=0.01, clip_norm=1.0, trainable="all",
                     text_dropout=0.1, steps=30000),
    "dmd_intra": dict(lr=2e-6, lr_critic=4e-7, b1=0.0, b2=0.999, weight_decay=0.01, clip_norm=1.0,
                      clip_norm_critic=10.0, critic_steps=5, guidance_scale=3.0, min_t=20.0, max_t=980.0,
                      context_dropout=0.1, trainable="all", critic_trainable="all", steps=30000),
    "dmd_inter": dict(lr=2e-6, lr_critic=4e-7, b1=0.0, b2=0.999, weight_decay=0.01, clip_norm=1.0,
                      clip_norm_critic=10.0, critic_steps=5, guidance_scale=3.0, min_t=20.0, max_t=980.0,
                      context_dropout=0.1, trainable="lora", critic_trainable="lora", lora_rank=256,
                      lora_alpha=256.0, steps=30000),
}


@pytest.mark.parametrize("stage", sorted(PUBLISHED))
def test_stage_hyperparameters_are_the_published_ones(stage):
    for size in ("wan_1_3b", "wan_14b"):
        c = get_config(size, stage)
        assert {k: c.train[k] for k in PUBLISHED[stage]} == PUBLISHED[stage]
        assert c.train.warmup_steps == 0  # constant learning rate, no scheduler in the reference
        assert tuple(c.shotstream.denoising_steps) == (1000, 740, 500, 260) and c.shotstream.timestep_shift == 8.0
        assert c.video.shot_frames == 81 and (c.video.height, c.video.width) == (480, 832)
        assert c.data.resize == "stretch" and c.shotstream.first_shot_context == "zeros"
