#!/usr/bin/env bash
# The device call of benchmarks/RESULTS.md, "Memory on one NVIDIA H200": does the copy curriculum
# (train.copy_frame) give a Shapes teacher memory? It makes the world and pre-encodes it, trains three
# teacher_long.py teachers from scratch side by side on one GPU (c0: the recipe; c1: copy_frame=1; c5:
# copy_frame=0.5; c1 and c5 without context dropout), probes each with eval.shapes_memory, goes on with
# teacher_long_more.py's ordinary data (c0b, c1b, c5b), and probes again. About 585 s on one H200.
# From the repository root:
#   OUT=/tmp/memory bash benchmarks/memory_gpu.sh
# Wheels in .whl/ are installed first (NOWHL=1: not). The lent H200 lacked grain 0.2.18, array_record
# 0.8.6, portpicker, ml_collections 1.1.0 and imageio-ffmpeg; 0.5.1's wheel (27 MB) fits a call's 64 MiB,
# 0.8.1's (68 MB) does not.
# Results: OUT/run.log (every figure), OUT/logs.tar.gz (logs, metrics, probe JSON), OUT/*_export.tar.
# Settings (environment): STORIES, P1 and P2 (steps of each phase), EX (probe examples), T1 and T2 (each
# phase's time limit in s: a stopped teacher is exported from its last checkpoint), R (run dir), W (workers).
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-/tmp/memory}; mkdir -p "$OUT"
R=${R:-/tmp/memory_run}; mkdir -p "$R"
STORIES=${STORIES:-2000}; P1=${P1:-8000}; P2=${P2:-6000}; EX=${EX:-48}; W=${W:-$(nproc)}
T1=${T1:-220}; T2=${T2:-170}; CK=${CK:-2000}
PY=${PY:-python3}
log() { echo "[memory +$SECONDS s] $*" | tee -a "$OUT/run.log"; }
if [ -d .whl ] && [ -z "${NOWHL:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee -a "$OUT/run.log"
ENCD=$PWD/shotstream_jax/assets/default_model
log "world $STORIES"
$PY -m shotstream_jax.data.shapes --out=$R/data --num_stories=$STORIES --seed=0 --workers=$W > $R/world.log 2>&1 || { tail -5 $R/world.log; exit 1; }
log "preencode"
$PY -m shotstream_jax.data.preencode --config=configs/shapes/teacher.py --out=$R/latents \
  --config.data.manifest=$R/data/manifest.csv --config.data.encoder_dir=$ENCD --workers=$W > $R/pre.log 2>&1 || { tail -5 $R/pre.log; exit 1; }
ENC=(--config.data.encoder_dir=$ENCD --config.data.latents_dir=$R/latents)

train() {  # train NAME LIMIT CONFIG [flags]: export at the end, or from the last checkpoint if the limit stops it
  local name=$1 lim=$2 config=$3; shift 3
  timeout $lim $PY -m shotstream_jax.cli.train --config=configs/shapes/$config.py --workdir=$R/$name --noprogress \
    --config.train.checkpoint_every=$CK "${ENC[@]}" "$@" > $R/$name.log 2>&1
  local rc=$?
  if [ ! -d $R/$name/export ]; then
    $PY -m shotstream_jax.cli.train --config=configs/shapes/$config.py --workdir=$R/$name --export_only "${ENC[@]}" "$@" \
      >> $R/$name.log 2>&1
  fi
  log "$name: rc $rc, export $(ls -d $R/$name/export 2>/dev/null), last: $(tail -n 1 $R/$name/metrics.jsonl 2>/dev/null | cut -c1-200)"
}
probe() {  # probe NAME TEACHER [flags]
  local name=$1 t=$2; shift 2
  [ -d $R/$t/export ] || { log "probe $name: no export"; return; }
  $PY -m shotstream_jax.eval.shapes_memory --teacher=$R/$t/export --encoder_dir=$ENCD --latents=$R/latents \
    --examples=$EX --output=$R/probe_$name.json "$@" > $R/probe_$name.log 2>&1
  log "probe $name: $($PY -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: d[k] for k in ('own', 'swap_keeps', 'swap_takes', 'drawn', 'cut', 'n')})" $R/probe_$name.json 2>/dev/null || tail -n 3 $R/probe_$name.log)"
}

log "phase 1"
train c0 $T1 teacher_long --config.train.steps=$P1 &
train c1 $T1 teacher_long --config.train.steps=$P1 --config.train.copy_frame=1 --config.train.context_dropout=0 &
train c5 $T1 teacher_long --config.train.steps=$P1 --config.train.copy_frame=0.5 --config.train.context_dropout=0 &
wait
log "phase 2 (+ phase-1 probes beside it)"
(probe c1_copy c1 --copy_frame; probe c1 c1) &
(probe c0 c0; probe c5 c5) &
for v in c0 c1 c5; do
  train ${v}b $T2 teacher_long_more --config.train.steps=$P2 --config.train.init_dir=$R/$v/export &
done
wait
log "phase-2 probes"
probe c0b c0b & probe c1b c1b & probe c5b c5b & probe c5b_copy c5b --copy_frame &
wait
log "done"
for v in c0 c1 c5 c0b c1b c5b; do cp $R/$v/metrics.jsonl $R/metrics_$v.jsonl 2>/dev/null; done
tar -C $R -czf $OUT/logs.tar.gz $(cd $R && ls *.log *.json metrics_*.jsonl 2>/dev/null)
for v in c1b c5b c0b c1; do [ -d $R/$v/export ] && tar -C $R/$v -cf $OUT/${v}_export.tar export; done
ls -la $OUT
