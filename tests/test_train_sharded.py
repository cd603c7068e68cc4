"""Sharded training step vs the single-device step (the reference) on 8 forced host devices."""
import json
import textwrap

from tests.conftest import run_python

SCRIPT = textwrap.dedent("""
    import os, sys, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    import numpy as np
    from shotstream_jax import sharding
    from shotstream_jax.config import get_config
    from shotstream_jax.data import pipeline
    from shotstream_jax.train import stages

    cfg = get_config("toy", "teacher")
    cfg.video.shot_frames, cfg.shotstream.shot_latent_frames, cfg.data.toy_videos = 21, 6, 3
    cfg.train.batch_size, cfg.train.lr = 8, 1e-3
    batch = next(iter(pipeline.dataset(pipeline.source(cfg, sys.argv[1]), 8, seed=0)))
    out = {}
    for name, (d, f, t) in {"single": (1, 1, 1), "fsdp8": (1, 8, 1), "d2f2t2": (2, 2, 2)}.items():
        cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = d, f, t
        mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:d * f * t])
        stage = stages.TeacherStage(cfg, mesh)
        state, sh = stage.init_state()
        consts = stage.init_consts()
        step = stage.compile(sh, consts, batch)
        state, m = step(state, consts, sharding.shard_batch(mesh, batch))
        q = state["gen"]["blocks"]["self_attn"]["q"]["kernel"]
        out[name] = {"loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
                     "q_shard": list(q.addressable_shards[0].data.shape),
                     "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(jax.device_get(state["gen"]))]}
    print("RESULT" + json.dumps(out))
""")


def test_sharded_teacher_step_matches_single_device(tmp_path):
    script = tmp_path / "sharded.py"
    script.write_text(SCRIPT)
    r = run_python(str(script), str(tmp_path / "w"))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split("RESULT", 1)[1])
    ref = out["single"]
    assert out["fsdp8"]["q_shard"] == [2, 8, 64] and out["d2f2t2"]["q_shard"] == [2, 32, 32]
    for name in ("fsdp8", "d2f2t2"):
        got = out[name]
        assert abs(got["loss"] - ref["loss"]) <= 1e-5 * max(1.0, abs(ref["loss"])), name
        assert abs(got["grad_norm"] - ref["grad_norm"]) <= 1e-4 * ref["grad_norm"], name
        for a, b in zip(got["params"], ref["params"]):
            diff = max(abs(x - y) for x, y in zip(a, b))
            assert diff < 1e-5, (name, diff)
