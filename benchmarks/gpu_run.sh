#!/usr/bin/env bash
# The GPU checks and figures of benchmarks/RESULTS.md, in two parts that each fit
# one 10-minute call of a lent machine; run part 2 right after part 1, while the
# machine is warm. From the repository root on a CUDA machine:
#   OUT=/tmp/gpu bash benchmarks/gpu_run.sh 1     # kernel tests, attention table, bf16 bench (~7 min)
#   OUT=/tmp/gpu bash benchmarks/gpu_run.sh 2     # fp8 bench, Pallas end to end, a profile, torch (~7 min)
# Step limits come from an H200 run (2026-11-26): the 1.3B bench compiles for
# about 3 minutes (two chunk steps of about 60 s each, the VAE encoder 32 s).
# Wheels missing there (ml_collections; diffusers for compare_torch) are
# installed from .whl/ when it exists. Logs and JSON go to $OUT (8 files come
# back from a call at most).
set -u
PART=${1:?give the part: 1 or 2}
OUT=${OUT:-/tmp/gpu_run}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
# A checkout on the path (the image's pip cannot build an editable install offline).
export PYTHONPATH=$PWD:${PYTHONPATH:-}
# Both parts on one warm machine share what they compiled (the VAE encoder, the umT5 encoder).
BENCH="python3 -m shotstream_jax.cli.bench --model=wan-1.3b-random --compilation_cache=/tmp/xla_cache"

step() {  # step NAME SECONDS COMMAND...: run it, keep its log, say how it ended
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "== $name: rc $? in $((SECONDS - t0)) s"
  grep -v "^\s*$" "$OUT/$name.log" | grep -iv "warning\|xla_bridge" | tail -n 30
}

nvidia-smi --query-gpu=name,memory.total,clocks.sm,driver_version --format=csv,noheader
if [ "$PART" = 1 ]; then
  step gpu_tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_attention.py -k gpu_kernels
  step attention 70 python3 benchmarks/attention.py --iters 10
  step bench_bf16 300 $BENCH --shots=3 --time_vae --json="$OUT/bench_bf16.json"
else
  step bench_fp8 210 $BENCH --shots=3 --dtype=fp8 --json="$OUT/bench_fp8.json"
  step bench_pallas 190 $BENCH --shots=2 --attention_impl=pallas --json="$OUT/bench_pallas.json"
  step compare_torch 40 python3 benchmarks/compare_torch.py --no_compile --repeats 10
  # One shot under the profiler (compiles served from part 1's cache), then where its time went.
  step profile 100 $BENCH --shots=1 --profile_dir=/tmp/trace --json="$OUT/bench_profile.json"
  step trace_summary 30 python3 benchmarks/trace_summary.py /tmp/trace --top 15
fi
