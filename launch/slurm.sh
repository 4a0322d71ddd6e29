#!/usr/bin/env bash
# Submits diffax to SLURM on GPU nodes: sbatch reads a batch script from stdin whose `srun` starts
# one process per GPU. JAX reads the SLURM environment to connect the processes (diffax.distributed
# starts jax.distributed when SLURM_NTASKS > 1), and its SLURM cluster sets each process's
# local_device_ids to [SLURM_LOCALID]: with one task per node every process would use GPU 0 only.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LAUNCH_USAGE="launch/slurm.sh [--dry-run] [--nodes=N] [--gpus-per-node=G] [--time=HH:MM:SS] \
[--partition=P] [--account=A] [--job-name=NAME] CONFIG WORKDIR [--flag=value ...]  (or env NODES, \
GPUS_PER_NODE, TIME, PARTITION, ACCOUNT, DRY_RUN=1)"

nodes="${NODES:-1}"
gpus_per_node="${GPUS_PER_NODE:-8}"
time_limit="${TIME:-24:00:00}"
partition="${PARTITION:-}"
account="${ACCOUNT:-}"
job_name="${JOB_NAME:-diffax}"
python="${PYTHON:-python3}"
launch_take_common_flags "$@"
set -- "${LAUNCH_ARGS[@]+"${LAUNCH_ARGS[@]}"}"
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --nodes=*) nodes="${1#*=}" ;;
    --gpus-per-node=*) gpus_per_node="${1#*=}" ;;
    --time=*) time_limit="${1#*=}" ;;
    --partition=*) partition="${1#*=}" ;;
    --account=*) account="${1#*=}" ;;
    --job-name=*) job_name="${1#*=}" ;;
    *) launch_usage_error "unknown option $1 (launcher options come before CONFIG)" ;;
  esac
  shift
done
[[ $# -ge 2 ]] || launch_usage_error "CONFIG and WORKDIR are required"
config="$1"
workdir="$2"
shift 2

# --signal: SIGTERM to the tasks 2 minutes before the time limit, so training can checkpoint.
script="#!/bin/bash
#SBATCH --job-name=$job_name
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=$gpus_per_node
#SBATCH --gpus-per-node=$gpus_per_node
#SBATCH --time=$time_limit
#SBATCH --signal=TERM@120
#SBATCH --output=slurm-%j.out"
[[ -n "$partition" ]] && script+=$'\n'"#SBATCH --partition=$partition"
[[ -n "$account" ]] && script+=$'\n'"#SBATCH --account=$account"
script+=$'\n'"srun $(launch_join "$python" -m diffax.main "--config=$config" \
  "--workdir=$workdir" "$@")"

if [[ "${DRY_RUN:-0}" == "1" ]]; then
  # Exactly what runs below: sbatch reading the script from stdin.
  printf "sbatch <<'SBATCH_EOF'\n%s\nSBATCH_EOF\n" "$script"
  exit 0
fi
exec sbatch <<<"$script"
