#!/usr/bin/env bash
# Every worker of a Cloud TPU VM pod slice runs the same command. jax.distributed
# starts by itself on TPU VMs (shotstream_jax.sharding.maybe_initialize_distributed):
# the workers find each other from the VM metadata, nothing to set here.
# WORKDIR must be storage every worker sees: a gs:// bucket (or NFS).
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh configs/wan_1_3b/teacher.py gs://bucket/runs/teacher \
#       --config.mesh.fsdp=32 --config.train.batch_size=32
# Set REPO_DIR (the checkout on every worker, default ~/shotstream_jax, installed there with
# pip install -e ".[tpu]") and PYTHON (default python3) when they differ.
set -euo pipefail
usage="usage: TPU_NAME=... ZONE=... [PROJECT=...] launch/tpu_pod.sh CONFIG WORKDIR [flags...]"
CONFIG=${1:?$usage}
WORKDIR=${2:?$usage}
shift 2
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
# Quoted for the remote shell: ~ expands on the worker, flags keep their spaces.
REMOTE_DIR=${REPO_DIR:-'~/shotstream_jax'}
CMD="cd $REMOTE_DIR && ${PYTHON:-python3} -m shotstream_jax.cli.train $(printf '%q ' --config="$CONFIG" --workdir="$WORKDIR" --progress=false "$@")"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} --worker=all \
  --command="$CMD"
