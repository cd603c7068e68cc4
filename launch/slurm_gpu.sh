#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one task per node, each driving its node's 8 GPUs.
#   sbatch --nodes=4 launch/slurm_gpu.sh configs/wan_1_3b/dmd_intra.py /shared/runs/dmd \
#       --config.mesh.fsdp=32 --config.train.batch_size=32
# WORKDIR must be on storage every node sees (NFS/Lustre, or gs://). The python on
# PATH (activate the environment before sbatch; SLURM exports it) must have shotstream_jax.
#SBATCH --job-name=shotstream-train
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --signal=TERM@120
set -euo pipefail
usage="usage: sbatch --nodes=N launch/slurm_gpu.sh CONFIG WORKDIR [flags...]"
CONFIG=${1:?$usage}
WORKDIR=${2:?$usage}
shift 2
# The coordinator is the first node of the allocation; each task's rank is its SLURM_PROCID.
# (An array, not `| head -n1`: under pipefail a closed pipe could fail the script.)
mapfile -t HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
export JAX_COORDINATOR_ADDRESS="${HOSTS[0]}:${JAX_PORT:-12355}"
export JAX_NUM_PROCESSES="$SLURM_NNODES"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
# --signal above: SIGTERM 2 minutes before the time limit, and on scancel; the
# trainer writes a checkpoint at the current step and stops. Resubmit to resume.
srun --ntasks="$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c \
  'JAX_PROCESS_ID=$SLURM_PROCID exec python -m shotstream_jax.cli.train --progress=false "$@"' \
  _ --config="$CONFIG" --workdir="$WORKDIR" "$@"
