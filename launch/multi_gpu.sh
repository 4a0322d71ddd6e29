#!/usr/bin/env bash
# Runs diffax as one process owning every visible GPU of this host (no jax.distributed).
# CUDA_VISIBLE_DEVICES (or --gpus=LIST) picks the GPUs and is passed through explicitly.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LAUNCH_USAGE="launch/multi_gpu.sh [--dry-run] [--gpus=0,1,...] CONFIG WORKDIR [--flag=value ...] \
(or env CUDA_VISIBLE_DEVICES, DRY_RUN=1)"

gpus="${CUDA_VISIBLE_DEVICES:-}"
python="${PYTHON:-python3}"
launch_take_common_flags "$@"
set -- "${LAUNCH_ARGS[@]+"${LAUNCH_ARGS[@]}"}"
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --gpus=*) gpus="${1#*=}" ;;
    *) launch_usage_error "unknown option $1 (launcher options come before CONFIG)" ;;
  esac
  shift
done
[[ $# -ge 2 ]] || launch_usage_error "CONFIG and WORKDIR are required"
config="$1"
workdir="$2"
shift 2

cmd=()
[[ -n "$gpus" ]] && cmd+=(env "CUDA_VISIBLE_DEVICES=$gpus")
# --distributed=off: one process even inside a multi-task SLURM allocation; later flags override.
cmd+=("$python" -m diffax.main "--config=$config" "--workdir=$workdir" --distributed=off "$@")
launch_run "${cmd[@]}"
