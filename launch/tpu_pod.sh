#!/usr/bin/env bash
# Every worker of a TPU VM pod slice runs the same command; JAX finds its peers
# from the TPU metadata (jax.distributed.initialize() in shotstream_jax.sharding).
# WORKDIR must be shared storage every worker can write (a gs:// bucket or NFS).
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh configs/wan_1_3b/teacher.py gs://bucket/runs/teacher \
#       --config.mesh.fsdp=32 --config.mesh.data=1 --config.train.batch_size=32
set -euo pipefail
CONFIG=${1:?usage: TPU_NAME=... ZONE=... launch/tpu_pod.sh CONFIG WORKDIR [flags...]}
WORKDIR=${2:?usage: TPU_NAME=... ZONE=... launch/tpu_pod.sh CONFIG WORKDIR [flags...]}
shift 2
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_DIR=${REPO_DIR:-~/shotstream_jax}   # checkout on every worker (pip install -e "$REPO_DIR[tpu]")
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} --worker=all \
  --command="cd $REPO_DIR && python -m shotstream_jax.cli.train --config=$CONFIG --workdir=$WORKDIR --progress=false$ARGS"
