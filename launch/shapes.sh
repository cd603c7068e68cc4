#!/usr/bin/env bash
# The Shapes world, trained end to end from scratch with the ordinary stages:
#   world data -> VAE (9-frame clips, then whole shots) -> text encoder word order -> (pre-encode) -> teacher (four cosine cycles) -> ODE pairs -> ODE init -> intra-shot DMD
#   -> inter-shot DMD -> export (RUN/model, a model directory) -> scores on 50 held-out stories.
#
#   launch/shapes.sh RUN_DIR             the full run (about 4 h 40 min on 2 CPU cores; stage times in the README)
#   TEACHER=long launch/shapes.sh RUN_DIR   the teacher in two long cycles of batch 32 (teacher_long*.py) instead
#                                        of four of batch 8; 6 min on one H200, hours on a CPU. The shipped model:
#                                        TEACHER=long STORIES=2000 ENCODERS=shotstream_jax/assets/default_model
#   QUICK=1 launch/shapes.sh RUN_DIR     every stage for a few steps: proves the chain works
# Other settings (environment): STORIES=N training stories (default 400); ENCODERS=MODEL_DIR reuses that
# model directory's VAE and text encoder (e.g. shotstream_jax/assets/default_model) instead of training
# them; WORKERS=N processes writing and decoding the world (default: every core); VAE=4x trains a VAE
# with 4x spatial compression (configs/shapes/vae4x*.py: 9-frame clips, whole shots, lone frames, whole
# shots again) instead of the shipped recipe's 8x one; the DiT then sees 4x the tokens.
#
# Re-running with the same RUN_DIR continues: finished stages (those with an export/) are
# skipped and the stage in progress resumes from its last checkpoint. Logs: RUN_DIR/*/metrics.jsonl.
set -euo pipefail
RUN=${1:?usage: [QUICK=1] launch/shapes.sh RUN_DIR}
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."
mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)

if [ "${QUICK:-0}" = 1 ]; then
  STORIES=${STORIES:-6}; HELDOUT=2
  FAST=(--config.train.steps=2 --config.train.checkpoint_every=1 --config.train.warmup_steps=0)
  ODE=(--config.train.ode_steps=4)
else
  STORIES=${STORIES:-400}; HELDOUT=50
  FAST=(); ODE=()
fi
WORKERS=${WORKERS:-$(nproc)}

say() { echo "[shapes $(date -u +%H:%M:%S)] $*"; }
train() {  # train NAME CONFIG [flags...]: one shotstream-train stage, skipped once exported
  local name=$1 config=$2; shift 2
  if [ -d "$RUN/$name/export" ]; then say "$name: done (export exists)"; return; fi
  say "$name: training (resumes from $RUN/$name/checkpoints if any)"
  $PY -m shotstream_jax.cli.train --config="configs/shapes/$config.py" --workdir="$RUN/$name" "$@" "${FAST[@]}"
}

say "world: $STORIES training stories (seed 0), $HELDOUT held-out stories (seed 1)"
$PY -m shotstream_jax.data.shapes --out="$RUN/data" --num_stories=$STORIES --seed=0 --workers=$WORKERS
$PY -m shotstream_jax.data.shapes --out="$RUN/heldout" --num_stories=$HELDOUT --seed=1 --noprefixes --workers=$WORKERS

if [ -n "${ENCODERS:-}" ]; then
  ENC_DIR=$(cd "$ENCODERS" && pwd)
  say "VAE and text encoder: $ENC_DIR's (no vae, vae_shots or text stage)"
else
  WORLD=(--config.data.manifest="$RUN/data/manifest.csv" --config.text_encoder.tokenizer="$RUN/data/tokenizer.json")
  V=vae; [ "${VAE:-8x}" = 4x ] && V=vae4x
  train vae $V "${WORLD[@]}"
  # The VAE goes on from 9-frame clips to whole shots (configs/shapes/vae_shots.py says why).
  train vae_shots ${V}_shots "${WORLD[@]}" --config.train.init_dir="$RUN/vae/export"
  VAE_DONE=vae_shots
  if [ "$V" = vae4x ]; then
    # Sharp edges from lone frames, then whole shots again for the later frames (configs/shapes/vae4x_frames.py).
    train vae_frames vae4x_frames "${WORLD[@]}" --config.train.init_dir="$RUN/vae_shots/export"
    train vae_frames_shots vae4x_shots "${WORLD[@]}" --config.train.init_dir="$RUN/vae_frames/export" \
      --config.train.foreground_weight=1.0
    VAE_DONE=vae_frames_shots
  fi
  # The random umT5 learns the prompts' word order (configs/shapes/text.py says why).
  train text text --config.data.manifest="$RUN/data/manifest.csv" --config.train.init_dir="$RUN/$VAE_DONE/export"
  ENC_DIR="$RUN/text/export"
fi
ENC=(--config.data.encoder_dir="$ENC_DIR" --config.data.latents_dir="$RUN/latents")

if [ ! -d "$RUN/latents" ]; then
  say "pre-encoding the world with the trained VAE and the text encoder (goes on from latents.partial if any)"
  $PY -m shotstream_jax.data.preencode --config=configs/shapes/teacher.py --out="$RUN/latents" \
    --config.data.manifest="$RUN/data/manifest.csv" --config.data.encoder_dir="$ENC_DIR" --workers=$WORKERS
fi

if [ "${TEACHER:-cycles}" = long ]; then
  # Two long cycles at batch 32 (configs/shapes/teacher_long*.py): 8 min on a GPU, many hours on 2 CPU cores.
  train teacher_long teacher_long "${ENC[@]}"
  train teacher_long_more teacher_long_more "${ENC[@]}" --config.train.init_dir="$RUN/teacher_long/export"
  prev=teacher_long_more
else
  train teacher teacher "${ENC[@]}"
  # A second cosine cycle from the first teacher (configs/shapes/teacher_more.py says why).
  train teacher_more teacher_more "${ENC[@]}" --config.train.init_dir="$RUN/teacher/export"
  # More cycles with the second's settings, each from the one before (one more cycle: one more name here).
  prev=teacher_more
  for cycle in teacher_third teacher_fourth; do
    train "$cycle" teacher_more "${ENC[@]}" --config.train.init_dir="$RUN/$prev/export"
    prev=$cycle
  done
fi
TEACHER_DIR="$RUN/$prev/export"   # the last cycle: the teacher every later stage and the teacher score use
TEACHER=(--config.train.teacher_dir="$TEACHER_DIR")
say "ode_pairs: teacher trajectories (skips the ones already written)"
$PY -m shotstream_jax.cli.train --config=configs/shapes/ode_pairs.py --workdir="$RUN/ode_pairs_run" \
  "${ENC[@]}" "${TEACHER[@]}" --config.train.ode_dir="$RUN/ode_pairs" "${ODE[@]}"
train ode_init ode_init "${ENC[@]}" --config.train.ode_dir="$RUN/ode_pairs" --config.train.init_dir="$TEACHER_DIR"
train dmd_intra dmd_intra "${ENC[@]}" "${TEACHER[@]}" --config.train.init_dir="$RUN/ode_init/export"
train dmd_inter dmd_inter "${ENC[@]}" "${TEACHER[@]}" --config.train.init_dir="$RUN/dmd_intra/export"

if [ ! -d "$RUN/model" ]; then
  cp -r "$RUN/dmd_inter/export" "$RUN/model.tmp" && mv "$RUN/model.tmp" "$RUN/model"
fi
say "export: $RUN/model ($(du -sh "$RUN/model" | cut -f1))"

score() {  # score NAME MODEL_DIR [flags...]: generate the held-out stories with MODEL_DIR, then score them
  local name=$1 model=$2; shift 2
  $PY -m shotstream_jax.eval.shapes --model="$model" --stories="$RUN/heldout/stories.json" \
    --videos="$RUN/eval/$name" --output="$RUN/eval/$name.json" "$@"
}
say "scoring the final student on the $HELDOUT held-out stories"
score final "$RUN/model"
# Ablations on the first ABLATION_STORIES held-out stories (all by default).
A=(--limit="${ABLATION_STORIES:-0}")
say "ablation: the final student without its global context cache (no memory of earlier shots)"
score no_global_context "$RUN/model" --no_global_context "${A[@]}"
say "ablation: the final student without the RoPE shot phase"
score no_shot_phase "$RUN/model" --no_shot_phase "${A[@]}"
say "ablation: the bidirectional teacher, shot by shot with many steps and CFG"
score teacher "" --teacher="$TEACHER_DIR" --encoder_dir="$ENC_DIR" "${A[@]}"
for m in dmd_intra ode_init; do
  say "ablation: the student after $m"
  score "$m" "$RUN/$m/export" "${A[@]}"
done
say "done: model in $RUN/model, metrics in $RUN/eval/*.json"
