#!/usr/bin/env bash
# The device call of benchmarks/RESULTS.md, "Memory on one NVIDIA H200": does the copy curriculum
# (train.copy_frame) give a Shapes teacher memory? It makes the world and pre-encodes it, trains three
# teacher_long.py teachers from scratch side by side on one GPU (c0: the recipe; c1: copy_frame=1; c5:
# copy_frame=0.5; c1 and c5 without context dropout), probes each with eval.shapes_memory, goes on with
# teacher_long_more.py's ordinary data (c0b, c1b, c5b), and probes again. About 585 s on one H200.
# From the repository root:
#   OUT=/tmp/memory bash benchmarks/memory_gpu.sh
# Results: OUT/run.log (every figure), OUT/logs.tar.gz (logs, metrics, probe JSON), OUT/*_export.tar.
# Settings (environment): those of benchmarks/memory_lib.sh, P1 and P2 (steps of each phase), T1 and T2
# (each phase's time limit in s: a stopped teacher is exported from its last checkpoint), R (run dir).
NAME=memory; OUT=${OUT:-/tmp/memory}; R=${R:-/tmp/memory_run}
P1=${P1:-8000}; P2=${P2:-6000}; T1=${T1:-220}; T2=${T2:-170}
source benchmarks/memory_lib.sh

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
pack c0 c1 c5 c0b c1b c5b -- c1b c5b c0b c1
