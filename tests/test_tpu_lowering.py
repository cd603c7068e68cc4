"""The sharded train step and student chunk step lower for TPU (jax.export, platforms=("tpu",)) on an 8-device mesh.

Reference: the same lowering with the splash kernel called directly (no
shard_map) fails, as Mosaic kernels cannot be partitioned by XLA; with
`kernels/sharded.py` it succeeds, and the exported module runs the splash
kernel (a tpu_custom_call) inside a shard_map'd region. The Pallas GPU kernel
behind the same wrapper, interpreted on CPU, matches the XLA attention on
meshes splitting batch, heads and queries.
"""
import json
import textwrap

from tests.conftest import run_python

SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax import export
    # Trace as on a TPU host: the attention dispatch picks the splash kernel ("auto").
    jax.default_backend = lambda: "tpu"
    from shotstream_jax import schedule, sharding
    from shotstream_jax.config import get_config
    from shotstream_jax.kernels import sharded
    from shotstream_jax.models import student
    from shotstream_jax.models.wan_dit import WanDiT, WanDiTConfig
    from shotstream_jax.train import memory, stages

    cfg = get_config("toy", "teacher")
    cfg.video.shot_frames, cfg.shotstream.shot_latent_frames = 21, 6
    cfg.model.dim, cfg.model.num_heads, cfg.model.ffn_dim = 256, 2, 256  # head dim 128, as splash wants
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, 2, 2
    cfg.train.batch_size = 4
    mesh = sharding.make_mesh(cfg.mesh)
    sds = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)

    def lower_train_step():
        stage = stages.TeacherStage(cfg, mesh)
        abstract, state_sh = stage.abstract_state()
        ex = memory._example(cfg)
        batch = {k: jax.ShapeDtypeStruct((4,) + a.shape, a.dtype) for k, a in ex.items()}
        with jax.set_mesh(mesh):
            step = stage.compile(state_sh, {}, batch)
            args = (jax.tree.map(sds, abstract, state_sh), {},
                    jax.tree.map(sds, batch, stage.batch_shardings(batch)))
            return export.export(step, platforms=("tpu",))(*args).mlir_module()

    def lower_chunk_step():
        dcfg = WanDiTConfig.from_dict(cfg.model)
        abstract = nnx.eval_shape(lambda: WanDiT(dcfg, rngs=nnx.Rngs(0)))
        graphdef, state = nnx.split(abstract, nnx.Param)
        shapes = state.to_pure_dict()
        params = jax.tree.map(sds, shapes, sharding.tree_shardings(mesh, sharding.logical_names(abstract), shapes))
        b, hw = 4, (4, 4)
        cache = jax.eval_shape(lambda: student.init_cache(dcfg, b, hw, context_frames=6, shot_frames=6))
        heads = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp"), None, "tensor", None))
        rows = lambda nd: sharding.batch_sharding(mesh, nd)
        cache = cache.replace(k=sds(cache.k, heads), v=sds(cache.v, heads),
                              context_len=sds(cache.context_len, sharding.replicated(mesh)),
                              num_local=sds(cache.num_local, sharding.replicated(mesh)))
        text = jax.ShapeDtypeStruct((b, cfg.model.text_len, cfg.model.text_dim), jnp.float32)
        text_kv = jax.eval_shape(lambda p, t: nnx.merge(graphdef, p).encode_text(t), shapes, text)
        text_kv = jax.tree.map(lambda a: sds(a, heads if a.ndim == 5 else sharding.replicated(mesh)), text_kv)
        noise = sds(jax.ShapeDtypeStruct((b, 3) + hw + (16,), jnp.float32), rows(5))
        ts = schedule.student_timesteps(cfg.shotstream.denoising_steps, cfg.shotstream.timestep_shift)
        fn = jax.jit(lambda p, c, x, kv: student.chunk_pass(nnx.merge(graphdef, p), c, x, x, jax.random.PRNGKey(0),
                                                            kv, 1, 1.0 / 6.0, ts))
        with jax.set_mesh(mesh):
            return export.export(fn, platforms=("tpu",))(params, cache, noise, text_kv).mlir_module()

    def sharded_pallas_error():
        # Our Pallas kernel (interpreted) per shard vs the XLA reference, batch/heads/queries split.
        from shotstream_jax.kernels import MaskSpec, attention
        ks = jax.random.split(jax.random.PRNGKey(0), 3)
        q, k, v = (jax.random.normal(kk, (4, 64, 2, 32), jnp.float32) for kk in ks)
        mask = MaskSpec(kv_len=jnp.array([64, 40, 64, 20], jnp.int32), q_chunk=jnp.arange(64) // 16, kv_chunk=jnp.arange(64) // 16)
        ref = attention(q, k, v, mask, impl="xla")
        errs = []
        for d, f, c, t in ((2, 2, 1, 2), (1, 2, 2, 2)):
            m = sharding.make_mesh(dict(data=d, fsdp=f, context=c, tensor=t))
            spec = jax.sharding.NamedSharding(m, jax.sharding.PartitionSpec(("data", "fsdp"), "context", "tensor"))
            with jax.set_mesh(m):
                got = jax.jit(lambda q, k, v, mask: attention(q, k, v, mask, impl="pallas_interpret"))(
                    *(jax.device_put(x, spec) for x in (q, k, v)), mask)
            errs.append(float(jnp.max(jnp.abs(got - ref))))
        return max(errs)

    out = {"pallas_error": sharded_pallas_error()}
    for name, fn in (("train_step", lower_train_step), ("chunk_step", lower_chunk_step)):
        text = fn()
        out[name] = {"splash": text.count("tpu_custom_call"), "shard_map": "shmap_body" in text or "sdy.manual_computation" in text}
    # Without the shard_map wrapper the same lowering must fail.
    sharded.on_mesh = lambda kernel, q, k, v, mask=None, **kw: kernel(q, k, v, mask, **kw)
    try:
        lower_train_step()
        out["unwrapped_error"] = ""
    except Exception as e:
        out["unwrapped_error"] = str(e)[:300]
    print("RESULT" + json.dumps(out))
""")


def test_sharded_steps_lower_for_tpu(tmp_path):
    script = tmp_path / "lower.py"
    script.write_text(SCRIPT)
    r = run_python(str(script))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split("RESULT", 1)[1])
    for name in ("train_step", "chunk_step"):
        assert out[name]["splash"] > 0 and out[name]["shard_map"], (name, out[name])
    assert out["pallas_error"] < 1e-5, out
    assert "shard_map" in out["unwrapped_error"] or "partition" in out["unwrapped_error"].lower(), out
