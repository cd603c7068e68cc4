#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one task per node, each driving its node's GPUs.
#   sbatch --nodes=4 launch/slurm_gpu.sh configs/wan_1_3b/dmd_intra.py /shared/runs/dmd \
#       --config.mesh.fsdp=32 --config.train.batch_size=32
#SBATCH --job-name=shotstream-train
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
set -euo pipefail
CONFIG=${1:?usage: sbatch launch/slurm_gpu.sh CONFIG WORKDIR [flags...]}
WORKDIR=${2:?usage: sbatch launch/slurm_gpu.sh CONFIG WORKDIR [flags...]}
shift 2
# The coordinator is the first node; every task reads its rank from SLURM.
export JAX_COORDINATOR_ADDRESS="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1):${JAX_PORT:-12355}"
export JAX_NUM_PROCESSES="$SLURM_NNODES"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
srun --ntasks="$SLURM_NNODES" --ntasks-per-node=1 bash -c \
  'JAX_PROCESS_ID=$SLURM_PROCID exec python -m shotstream_jax.cli.train --progress=false "$@"' \
  _ --config="$CONFIG" --workdir="$WORKDIR" "$@"
