#!/usr/bin/env bash
# Multi-node GPU training without a scheduler: one process per node drives all of its GPUs. The
# tree, its .venv, WORKDIR and the token directories must be at the same path on every node (a
# shared file system, or copies). Either start it from one machine over ssh:
#
#   bash launch/multinode.sh --hosts gpu0,gpu1 configs/lm/valle.py runs/valle \
#       --config.data.train=tokens/train --config.data.valid=tokens/valid
#
# (node 0 is the first host, the coordinator at its port $PORT, 12355 by default; each node
# logs to $LOGS/node-N.log here, LOGS=logs by default), or run the same line on every node yourself with its rank:
#
#   JAX_COORDINATOR_ADDRESS=gpu0:12355 NNODES=2 NODE_RANK=0 bash launch/multinode.sh CONFIG WORKDIR ...
#   JAX_COORDINATOR_ADDRESS=gpu0:12355 NNODES=2 NODE_RANK=1 bash launch/multinode.sh CONFIG WORKDIR ...
#
# nclm starts jax.distributed from JAX_COORDINATOR_ADDRESS with NNODES / NODE_RANK (or
# JAX_PROCESS_COUNT / JAX_PROCESS_ID); JAX_LOCAL_DEVICE_IDS=0,1,2,3 restricts a process to some
# GPUs (several processes per node). --dry-run prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0 HOSTS=""
while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --hosts) HOSTS=$2; shift ;;
    *) echo "multinode.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if (($# < 2)); then
  echo "usage: bash launch/multinode.sh [--dry-run] [--hosts h0,h1,...] CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
PYTHON=${PYTHON:-.venv/bin/python}
train=("$PYTHON" -m nclm.cli train --config "$1" --workdir "$2" "${@:3}" --no-progress)

if [[ -z "$HOSTS" ]]; then  # this node: the rank and coordinator come from the environment
  if [[ -z "${JAX_COORDINATOR_ADDRESS:-}" ]] || {
    [[ -z "${NNODES:-}" || -z "${NODE_RANK:-}" ]] &&
      [[ -z "${JAX_PROCESS_COUNT:-}" || -z "${JAX_PROCESS_ID:-}" ]]
  }; then
    echo "multinode.sh: set JAX_COORDINATOR_ADDRESS=host:port and NNODES, NODE_RANK (or" \
      "JAX_PROCESS_COUNT, JAX_PROCESS_ID), or use --hosts" >&2
    exit 2
  fi
  if ((DRY)); then
    for v in JAX_COORDINATOR_ADDRESS NNODES NODE_RANK JAX_PROCESS_COUNT JAX_PROCESS_ID \
      JAX_LOCAL_DEVICE_IDS; do
      [[ -n "${!v:-}" ]] && printf '%s=%s ' "$v" "${!v}"
    done
    echo "${train[*]}"
    exit 0
  fi
  exec "${train[@]}"
fi

# ---- from one machine: ssh to every host, node 0 first --------------------------------------
IFS=, read -r -a hosts <<<"$HOSTS"
coordinator="${hosts[0]}:${PORT:-12355}"
LOGS=${LOGS:-logs}
((DRY)) || mkdir -p "$LOGS"
pids=()
for rank in "${!hosts[@]}"; do
  remote="cd $(printf '%q' "$PWD") && JAX_COORDINATOR_ADDRESS=$coordinator NNODES=${#hosts[@]}"
  remote+=" NODE_RANK=$rank${JAX_LOCAL_DEVICE_IDS:+ JAX_LOCAL_DEVICE_IDS=$JAX_LOCAL_DEVICE_IDS}"
  remote+="$(printf ' %q' "${train[@]}")"
  if ((DRY)); then
    echo "+ ssh ${hosts[$rank]} '$remote' > $LOGS/node-$rank.log"
  else
    ssh -o BatchMode=yes "${hosts[$rank]}" "$remote" >"$LOGS/node-$rank.log" 2>&1 &
    pids+=($!)
  fi
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
((DRY)) || echo "multinode.sh: logs in $LOGS/node-*.log (exit status $status)"
exit "$status"
