#!/usr/bin/env bash
# Runs diffax on every worker of a Cloud TPU VM pod slice: the same command on each worker; JAX
# finds the other workers itself (diffax.distributed starts jax.distributed on TPU pods).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LAUNCH_USAGE="launch/tpu_pod.sh [--dry-run] [--tpu=NAME] [--zone=ZONE] [--project=ID] \
[--repo=DIR] CONFIG WORKDIR [--flag=value ...]  (or env TPU_NAME, TPU_ZONE, TPU_PROJECT, \
DIFFAX_REPO, DRY_RUN=1)"

tpu="${TPU_NAME:-}"
zone="${TPU_ZONE:-}"
project="${TPU_PROJECT:-}"
repo="${DIFFAX_REPO:-~/diffax}"  # The checkout on the workers; ~ expands there.
python="${PYTHON:-python3}"
launch_take_common_flags "$@"
set -- "${LAUNCH_ARGS[@]+"${LAUNCH_ARGS[@]}"}"
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --repo=*) repo="${1#*=}" ;;
    *) launch_usage_error "unknown option $1 (launcher options come before CONFIG)" ;;
  esac
  shift
done
[[ $# -ge 2 ]] || launch_usage_error "CONFIG and WORKDIR are required"
[[ -n "$tpu" ]] || launch_usage_error "no TPU name: pass --tpu=NAME or set TPU_NAME"
[[ -n "$zone" ]] || launch_usage_error "no zone: pass --zone=ZONE or set TPU_ZONE"
config="$1"
workdir="$2"
shift 2

# The remote command is one string run by the workers' shells; ~ in $repo must stay unquoted.
remote="cd $repo && $(launch_join "$python" -m diffax.main "--config=$config" \
  "--workdir=$workdir" "$@")"
cmd=(gcloud compute tpus tpu-vm ssh "$tpu" "--zone=$zone")
[[ -n "$project" ]] && cmd+=("--project=$project")
cmd+=(--worker=all "--command=$remote")
launch_run "${cmd[@]}"
