#!/usr/bin/env bash
# A device call for the cue curriculum (data/shapes_cues.py, train.cue_frame): does a Shapes teacher learn to
# take the character, not the whole frame, from its context when the last context frame is a cue frame
# (the target's character on the context shot's background)? It makes the world, pre-encodes it, adds the
# cue frames, and trains three teacher_long.py teachers from scratch side by side on one GPU with a cue in
# every example, at levels 0, 1 and 2 (k0, k1, k2: the character at the target's first position, 1/8 and
# 1/4 of the frame away), no context dropout. It probes each with its own level's cues, takes each one
# level further with teacher_long_more.py's rate (k0n, k1n, k2n), and probes again: at the new level, and
# k2n on the ordinary data (no cue) too, where memory is what the issue asks for. Cut near 1 with `own`
# and `swap_takes` high at a level means the teacher copies the character and draws its own background.
# Planned for one call of under 600 s on one H200, timed from memory_gpu.sh's (585 s) and the cue pass.
# From the repository root:
#   OUT=/tmp/cue bash benchmarks/cue_gpu.sh
# Results: OUT/run.log (every figure), OUT/logs.tar.gz (logs, metrics, probe JSON), OUT/*_export.tar.
# Settings (environment): those of benchmarks/memory_lib.sh, P1 and P2 (steps of each phase), T1 and T2
# (each phase's time limit in s: a stopped teacher is exported from its last checkpoint), R (run dir).
NAME=cue; OUT=${OUT:-/tmp/cue}; R=${R:-/tmp/cue_run}
P1=${P1:-8000}; P2=${P2:-4000}; T1=${T1:-210}; T2=${T2:-110}
source benchmarks/memory_lib.sh
log "cue frames"
$PY -m shotstream_jax.data.shapes_cues --config=configs/shapes/teacher.py "${ENC[@]}" > $R/cues.log 2>&1 || { tail -5 $R/cues.log; exit 1; }
CUE=(--config.train.cue_frame=1 --config.train.context_dropout=0)

log "phase 1: cue levels 0, 1 and 2"
for l in 0 1 2; do train k$l $T1 teacher_long --config.train.steps=$P1 "${CUE[@]}" --config.train.cue_level=$l & done
wait
log "phase 2: one level further (+ phase-1 probes beside it)"
for l in 0 1 2; do probe k$l k$l --cue_level=$l & done
for l in 0 1 2; do
  train k${l}n $T2 teacher_long_more --config.train.steps=$P2 --config.train.init_dir=$R/k$l/export "${CUE[@]}" \
    --config.train.cue_level=$((l + 1)) &
done
wait
log "phase-2 probes"
for l in 0 1 2; do probe k${l}n k${l}n --cue_level=$((l + 1)) & done
probe k2n_plain k2n &
wait
log "done"
pack k0 k1 k2 k0n k1n k2n -- k2n k1n k0n k0
