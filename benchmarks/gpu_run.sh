#!/usr/bin/env bash
# The GPU checks and figures of benchmarks/RESULTS.md in one call, in order of
# importance, each step under its own time limit so that one slow step does not
# take the others' time. Run on a CUDA machine from the repository root:
#   OUT=/tmp/gpu bash benchmarks/gpu_run.sh
# Wheels missing on that machine (ml_collections; diffusers for compare_torch)
# are installed from .whl/ when it exists. Logs and JSON go to $OUT.
set -u
OUT=${OUT:-/tmp/gpu_run}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
  || { echo "pip install -e . failed (see install.log); running from the checkout"; export PYTHONPATH=$PWD:${PYTHONPATH:-}; }
BENCH="python3 -m shotstream_jax.cli.bench"

step() {  # step NAME SECONDS COMMAND...: run it, keep its log, say how it ended
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "== $name: rc $? in $((SECONDS - t0)) s"
}

nvidia-smi --query-gpu=name,memory.total,clocks.sm,driver_version --format=csv,noheader
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
step gpu_tests 70 python3 -m pytest -q -x -p no:cacheprovider tests/test_attention.py -k gpu_kernels
step bench_bf16 170 $BENCH --model=wan-1.3b-random --shots=3 --time_vae --json="$OUT/bench_bf16.json"
step attention 110 python3 benchmarks/attention.py --iters 10
step bench_fp8 120 $BENCH --model=wan-1.3b-random --shots=3 --dtype=fp8 --json="$OUT/bench_fp8.json"
step compare_torch 60 python3 benchmarks/compare_torch.py --no_compile --repeats 10
for f in gpu_tests bench_bf16 attention bench_fp8 compare_torch; do
  echo "---- $f"; grep -v "^\s*$" "$OUT/$f.log" | grep -iv "warning\|^  warnings" | tail -n 25
done
