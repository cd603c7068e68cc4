#!/usr/bin/env bash
# One machine, all its local accelerators (or CPU): one process drives every device.
#   launch/local.sh configs/toy/teacher.py runs/teacher [--config.train.steps=100 ...]
set -euo pipefail
CONFIG=${1:?usage: launch/local.sh CONFIG WORKDIR [flags...]}
WORKDIR=${2:?usage: launch/local.sh CONFIG WORKDIR [flags...]}
shift 2
exec python -m shotstream_jax.cli.train --config="$CONFIG" --workdir="$WORKDIR" "$@"
