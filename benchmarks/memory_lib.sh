# Shared by the memory device calls (benchmarks/memory_gpu.sh, benchmarks/cue_gpu.sh); sourced from the
# repository root after NAME (the log tag), OUT and R are set. It installs the wheels in .whl/ (NOWHL=1: not),
# makes the Shapes world and pre-encodes it with the shipped encoders, and defines `log`, `train`, `probe`
# and `pack`. The lent H200 lacked grain 0.2.18, array_record 0.8.6, portpicker, ml_collections 1.1.0 and
# imageio-ffmpeg; 0.5.1's wheel (27 MB) fits a call's 64 MiB, 0.8.1's (68 MB) does not.
# Settings (environment): STORIES, EX (probe examples), CK (checkpoint every), W (workers), PY.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
mkdir -p "$OUT" "$R"
STORIES=${STORIES:-2000}; EX=${EX:-48}; W=${W:-$(nproc)}; CK=${CK:-2000}
PY=${PY:-python3}
log() { echo "[$NAME +$SECONDS s] $*" | tee -a "$OUT/run.log"; }
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
pack() {  # pack RUN... EXPORT...: logs, metrics and probes of the runs to OUT/logs.tar.gz; the exports named after -- as tars
  local runs=() v
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do runs+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  for v in "${runs[@]}"; do cp $R/$v/metrics.jsonl $R/metrics_$v.jsonl 2>/dev/null; done
  tar -C $R -czf $OUT/logs.tar.gz $(cd $R && ls *.log *.json metrics_*.jsonl 2>/dev/null)
  for v in "$@"; do [ -d $R/$v/export ] && tar -C $R/$v -cf $OUT/${v}_export.tar export; done
  ls -la $OUT
}
