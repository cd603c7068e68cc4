"""shotstream-bench: FLOP counts against hand-multiplied figures, and the CLI's JSON schema."""
import json

import pytest

from shotstream_jax import perf
from shotstream_jax.models.wan_dit import WanDiTConfig
from tests.conftest import run_python

# dim 64, ffn 128, 2 layers, freq_dim 32, patch (1,2,2) -> P*C = 64.
CFG = WanDiTConfig.from_size("tiny", text_dim=32, freq_dim=32, text_len=16)


def test_dit_pass_flops_by_hand():
    """Reference: the terms multiplied out by hand for Lq=12, Lk=20, Lt=16 over 3 frames."""
    # per layer: linears 2*12*(6*64*64 + 2*64*128) = 24 * 40960 = 983040
    #            self-attn 4*12*20*64 = 61440; cross-attn 4*12*16*64 = 49152
    per_layer = 983040 + 61440 + 49152
    # patch embed + head 2*12*(64*64 + 64*64) = 196608; time 2*3*(32*64 + 64*64 + 6*64*64) = 184320
    assert perf.dit_pass_flops(CFG, 12, 20, 16, 3) == 2 * per_layer + 196608 + 184320


def test_text_kv_flops_by_hand():
    """Reference: 2*16*(32*64 + 64*64) text MLP + 2 layers * 2*16*2*64*64 k/v projections."""
    assert perf.text_kv_flops(CFG, 16) == 196608 + 2 * 262144


def test_shot_flops_counts_the_passes():
    """Reference: the sum over passes written out (1 context pass, 2 chunks x 4 denoising passes,
    1 commit: the shot's last chunk is not committed), 4 tokens per frame."""
    s, nc, n = 4, 6, 3
    expected = perf.dit_pass_flops(CFG, nc * s, nc * s, 16, nc)
    expected += 5 * perf.dit_pass_flops(CFG, n * s, nc * s + n * s, 16, n)
    expected += 4 * perf.dit_pass_flops(CFG, n * s, nc * s + 2 * n * s, 16, n)
    assert perf.shot_flops(CFG, s, 16, nc, n, chunks=2, steps=4, context_valid=nc) == expected
    no_history = expected - perf.dit_pass_flops(CFG, nc * s, nc * s, 16, nc)
    # neither chunk's 9 passes attend to a context frame: 4*Lq*Lk*D fewer per layer
    no_history -= 9 * CFG.num_layers * 4 * (n * s) * (nc * s) * CFG.dim
    assert perf.shot_flops(CFG, s, 16, nc, n, chunks=2, steps=4, context_valid=0) == no_history


def test_pass_cost_matches_xla_cost_analysis():
    """Reference: XLA's cost analysis of a jitted DiT pass on CPU (layers unrolled, attention in one
    key block so that no loop hides FLOPs); it also counts the elementwise work, hence 3%."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from shotstream_jax.kernels.attention import single_key_block
    from shotstream_jax.models.wan_dit import WanDiT
    cfg = WanDiTConfig(dim=256, ffn_dim=1024, num_heads=2, num_layers=2, text_dim=64, text_len=16, freq_dim=32,
                       attention_impl="xla", scan_unroll=2)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: WanDiT(cfg, rngs=nnx.Rngs(0))))
    tkv = jax.eval_shape(lambda st: nnx.merge(graphdef, st).encode_text(jnp.zeros((1, 16, 64))), state)
    fwd = jax.jit(lambda st, x, t, tkv: nnx.merge(graphdef, st)(x, t, text_kv=tkv))
    with single_key_block():
        lowered = fwd.trace(state, jax.ShapeDtypeStruct((1, 3, 16, 16, 16), jnp.float32),
                            jax.ShapeDtypeStruct((1,), jnp.float32), tkv).lower()
    analysis = lowered.cost_analysis()
    xla_flops = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
    cost = perf.pass_cost(cfg, 192, 192, 192, 16, 3, key_tile=1)
    assert cost.self_useful == cost.self_executed == cost.self_dense
    assert cost.flops == perf.dit_pass_flops(cfg, 192, 192, 16, 3)
    assert abs(xla_flops / cost.flops - 1) < 0.03


def test_shot_costs_prefix_against_dense():
    """Reference: the key counts written out for 2 chunks of 12 tokens after 24 context tokens in a
    48-token buffer, key tiles of 16: prefixes 36 and 48 keys, executed 48 and 48, dense 48."""
    chunks = perf.shot_costs(CFG, 4, 16, 6, 3, chunks=2, steps=4, context_valid=6, key_tile=16)
    assert [len(c) for c in chunks] == [1 + 5, 4]  # context pass + 4 steps + commit; 4 steps
    unit = CFG.num_layers * 4 * 12 * CFG.dim  # self-attention FLOPs per key for 12 queries
    first, last = chunks[0][1], chunks[1][0]
    assert (first.self_useful, first.self_executed, first.self_dense) == (36 * unit, 48 * unit, 48 * unit)
    assert (last.self_useful, last.self_executed, last.self_dense) == (48 * unit, 48 * unit, 48 * unit)
    assert first.kv_bytes == CFG.num_layers * 2 * 36 * CFG.dim * 2


def test_time_shot_bookkeeping():
    """Reference: a fake shot of 3 chunks (9, 12, 12 frames) whose durations are known lower bounds."""
    import time

    import numpy as np

    def chunks():
        for n in (9, 12, 12):
            time.sleep(0.01)
            yield np.zeros((n, 2, 2, 3), np.uint8)

    t = perf.time_shot(lambda: time.sleep(0.02), chunks)
    assert t.frames == 33 and len(t.per_chunk_s) == 3
    assert t.text_encode_s >= 0.02 and min(t.per_chunk_s) >= 0.01
    assert t.first_frame_latency_s == pytest.approx(t.text_encode_s + t.per_chunk_s[0])
    assert t.total_s >= t.text_encode_s + sum(t.per_chunk_s)


@pytest.mark.parametrize("kind, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                        ("TPU v5p", 459e12), ("TPU v5 lite", 197e12), ("TPU v4", 275e12),
                                        ("cpu", None)])
def test_peak_flops_table(kind, peak):
    """Reference: the vendors' dense bf16 datasheet figures."""
    assert perf.peak_flops(kind) == peak


def test_random_weights_statistics():
    """Reference: the stated fill (matrices N(0, 1/fan_in), vectors 1) checked on a small umT5 of 2 layers."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from shotstream_jax.cli.bench import random_weights
    from shotstream_jax.models.umt5 import UMT5Config, UMT5Encoder
    cfg = UMT5Config.from_size("xxl", vocab_size=256, d_model=256, d_kv=32, d_ff=512, num_heads=8, num_layers=2,
                               dtype="bfloat16", param_dtype="bfloat16")
    make = lambda: UMT5Encoder(cfg, rngs=nnx.Rngs(0))
    model = random_weights(make, seed=3)
    abstract = jax.tree.leaves(nnx.state(nnx.eval_shape(make)))
    leaves = jax.tree.leaves(nnx.state(model))
    assert [(x.shape, x.dtype) for x in leaves] == [(a.shape, a.dtype) for a in abstract]
    matrices = 0
    for x in leaves:
        x = np.asarray(x, np.float32)
        if x.ndim < 2:
            assert (x == 1).all()
            continue
        matrices += 1
        std = 1 / np.sqrt(np.prod(x.shape[:-1]))
        # five standard errors of the sample mean and of the sample standard deviation
        assert abs(x.mean()) < 5 * std / np.sqrt(x.size), x.shape
        assert abs(x.std() / std - 1) < 5 / np.sqrt(2 * x.size), x.shape
    assert matrices >= 2 * 7  # q, k, v, o, wi_0, wi_1, wo per layer
    # Distinct leaves of one shape get distinct draws; the same seed gives the same weights.
    q0, q1 = model.blocks[0].attn.q.kernel.value, model.blocks[1].attn.q.kernel.value
    assert not jnp.array_equal(q0, q1)
    assert jnp.array_equal(random_weights(make, seed=3).blocks[0].attn.q.kernel.value, q0)


def test_cli_json_fields(tmp_path):
    """Reference: the field list and types promised by `shotstream-bench --help`, on the toy model."""
    out = tmp_path / "bench.json"
    r = run_python("-m", "shotstream_jax.cli.bench", "--model=toy", "--shots=2", f"--json={out}",
                   "--height=16", "--width=16", "--time_vae", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    for key in ("fps", "first_frame_latency_s", "compile_s", "text_encode_s", "achieved_flops_per_s"):
        assert isinstance(d[key], float) and d[key] > 0, key
    assert isinstance(d["peak_memory_bytes"], int) and d["peak_memory_bytes"] > 0
    assert d["peak_memory_source"]
    assert len(d["per_chunk_s"]) == 2 and all(len(s) == 7 for s in d["per_chunk_s"])
    assert all(isinstance(x, float) and x > 0 for s in d["per_chunk_s"] for x in s)
    assert d["frames_per_shot"] == [81, 81]
    assert d["mfu"] is None and "cpu" in d["mfu_note"]  # no known peak for a CPU
    assert d["device"] and d["backend"] == "cpu"
    assert d["config"]["height"] == 16 and d["config"]["width"] == 16 and d["config"]["dit"]["num_layers"] == 2
    assert len(d["flops_per_shot"]) == 2 and d["flops_per_shot"][1] > d["flops_per_shot"][0] > 0
    assert "ShotStream" in d["pipeline"] and d["config"]["umt5"]["d_model"] == 32
    # --time_vae: the shots' frames over their time less 7 chunk decodes each
    assert 0 < d["vae_decode_chunk_s"] < min(d["seconds_per_shot"])
    dit_s = sum(d["seconds_per_shot"]) - 14 * d["vae_decode_chunk_s"]
    assert d["fps_without_vae"] == pytest.approx(162 / dit_s)
    # progress: one line per shot on stderr as it ends, warm-up shots included
    assert r.stderr.count("shot ") >= 4 and "warm-up" in r.stderr


def test_cli_dry_run_report(tmp_path):
    """Reference: perf.shot_costs / roofline_seconds on the same shapes (toy at 32x32: 4 tokens per frame)."""
    out = tmp_path / "cost.json"
    r = run_python("-m", "shotstream_jax.cli.bench", "--model=toy", "--dry_run", f"--json={out}", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "roofline H100" in r.stdout and "self_attention_useful_flops" in r.stdout
    d = json.loads(out.read_text())
    first, later = d["shots"]["first shot (empty global cache)"], d["shots"]["later shots (full context)"]
    assert first["passes_per_chunk"] == [5] * 6 + [4] and later["passes_per_chunk"] == [6] + [5] * 5 + [4]
    cfg = WanDiTConfig.from_size("tiny", text_dim=32, freq_dim=32, text_len=256)
    costs = perf.shot_costs(cfg, 4, 256, 6, 3, 7, 4, 6, param_bytes=4, kv_bytes=4)
    assert later["self_attention_useful_flops"] == sum(p.self_useful for c in costs for p in c)
    assert later["self_attention_dense_flops"] > later["self_attention_useful_flops"]
    assert set(later["roofline"]) == {"H100", "H200", "A100", "v5p", "v6e"}
    assert d["vae_decode_flops_per_chunk"] > 0


def test_cli_rejects_unknown_model():
    """Reference: the error contract of cli/common.fail (one line naming the input and the fix)."""
    r = run_python("-m", "shotstream_jax.cli.bench", "--model=/no/such/dir", "--shots=1")
    assert r.returncode == 1
    assert "--model='/no/such/dir'" in r.stderr and "shotstream-convert" in r.stderr


def test_trace_summary_sums_by_timeline_and_op():
    """Reference: durations of a hand-written trace added up by hand."""
    from benchmarks.trace_summary import summarize
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "Stream #1"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 8, "args": {"name": "idle"}}]
    ops = [("fusion.1", 30.0), ("fusion.22", 20.0), ("gemm_bf16", 40.0), ("fusion", 10.0)]
    events = meta + [{"ph": "X", "pid": 1, "tid": 7, "name": n, "ts": 0, "dur": d} for n, d in ops]
    events.append({"ph": "X", "pid": 1, "tid": 8, "name": "tiny", "ts": 0, "dur": 0.5})  # < 1% of the busiest
    (name, busy, ranked), = summarize({"traceEvents": events}, top=5)
    assert name == "/device:GPU:0 / Stream #1" and busy == 100.0
    assert ranked == [("fusion", 60.0, 3), ("gemm_bf16", 40.0, 1)]
