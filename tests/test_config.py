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
