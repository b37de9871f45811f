#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM slice (a v5e-16 has 4 workers of 4 chips): copy this
# tree (the files git tracks or would track, plus the config if it is outside the tree) to each
# worker, run `nclm train` on all of them at once, then collect each worker's log.
#
#   bash launch/tpu_pod.sh [--dry-run] [--setup] TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]
#
#   bash launch/tpu_pod.sh --setup my-v5e-16 us-west4-a configs/lm/valle.py gs://bucket/runs/valle \
#       --config.data.train=gs://bucket/tokens/train --config.data.valid=gs://bucket/tokens/valid
#
# TPU VMs share no disk: WORKDIR (checkpoints, metrics, the exported model) and the token
# directories must be gs:// paths (or copies present on every worker); logs go to
# $LOGS/TPU_NAME/worker-N.log (LOGS=logs by default). No distributed settings
# are needed: jax finds the other workers through the TPU VM metadata. --setup runs
# launch/setup.sh and installs jax's TPU runtime on each worker first. Environment: PROJECT (a
# gcloud project other than the default), REMOTE_DIR (the tree's home on the workers, ~/nclm).
# --dry-run prints the gcloud commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0 SETUP=0
while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --setup) SETUP=1 ;;
    *) echo "tpu_pod.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if (($# < 4)); then
  echo "usage: bash launch/tpu_pod.sh [--dry-run] [--setup] TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
TPU=$1 ZONE=$2 CONFIG=$3 WORKDIR=$4
shift 4
REMOTE_DIR=${REMOTE_DIR:-nclm}
CONFIG_FILE=${CONFIG%%:*}  # configs/lm/valle.py:smoke -> configs/lm/valle.py
[[ -f "$CONFIG_FILE" ]] || { echo "tpu_pod.sh: CONFIG $CONFIG_FILE: no such file" >&2; exit 2; }
GCLOUD=(gcloud compute tpus tpu-vm)
FLAGS=(--zone "$ZONE")
[[ -n "${PROJECT:-}" ]] && FLAGS+=(--project "$PROJECT")

run() {  # a command, printed with --dry-run (words with spaces single-quoted), run otherwise
  if ((DRY)); then
    printf '+'
    for a in "$@"; do
      if [[ $a =~ ^[][A-Za-z0-9_./:=@%+,~-]+$ ]]; then printf ' %s' "$a"; else printf " '%s'" "${a//\'/\'\\\'\'}"; fi
    done
    printf '\n'
  else
    "$@"
  fi
}

# ---- the tree: tracked files, the config (it may be untracked or outside the tree) ----------
archive=${TMPDIR:-/tmp}/nclm-$$.tar.gz
remote_config=$CONFIG
if [[ "$(realpath "$CONFIG_FILE")" != "$PWD"/* ]]; then  # outside: ship it as configs/_launch.py
  remote_config=configs/_launch.py${CONFIG#"$CONFIG_FILE"}
fi
if ((DRY)); then
  echo "+ tar czf $archive (git ls-files --cached --others --exclude-standard, $CONFIG_FILE)"
else
  staging=$(mktemp -d)
  # tracked and new files, as in the working tree (not what .gitignore excludes: .venv, runs/)
  git ls-files -z --cached --others --exclude-standard |
    tar cf - --null --ignore-failed-read -T - 2>/dev/null | tar xf - -C "$staging"
  mkdir -p "$staging/$(dirname "${remote_config%%:*}")"
  cp "$CONFIG_FILE" "$staging/${remote_config%%:*}"
  tar czf "$archive" -C "$staging" .
  rm -rf "$staging"
  trap 'rm -f "$archive"' EXIT
fi
run "${GCLOUD[@]}" scp "$archive" "$TPU:nclm.tar.gz" --worker=all "${FLAGS[@]}"

# ---- every worker: unpack, (set up), train -------------------------------------------------
quoted=$(printf ' %q' "$@")
remote="set -e; mkdir -p $REMOTE_DIR ~/nclm_logs; tar xzf ~/nclm.tar.gz -C $REMOTE_DIR; cd $REMOTE_DIR"
if ((SETUP)); then
  # jax's TPU runtime at the version setup.sh installed (its libtpu pin)
  remote+="; bash launch/setup.sh >/dev/null"
  remote+="; .venv/bin/pip install -q \"jax[tpu]==\$(.venv/bin/python -c 'import jax; print(jax.__version__)')\""
fi
remote+="; . .venv/bin/activate"
remote+="; python -m nclm.cli train --config $(printf '%q' "$remote_config") --workdir $(printf '%q' "$WORKDIR")$quoted --no-progress"
remote+=" 2>&1 | tee ~/nclm_logs/train.log; exit \${PIPESTATUS[0]}"
status=0
run "${GCLOUD[@]}" ssh "$TPU" --worker=all "${FLAGS[@]}" --command "$remote" || status=$?

# ---- logs: one file per worker ---------------------------------------------------------------
if ((DRY)); then
  workers=${WORKERS:-4}
else
  workers=$("${GCLOUD[@]}" describe "$TPU" "${FLAGS[@]}" \
    --format='value(networkEndpoints[].ipAddress)' | tr ';' '\n' | grep -c .)
fi
LOGS=${LOGS:-logs}
((DRY)) || mkdir -p "$LOGS/$TPU"
for ((w = 0; w < workers; w++)); do
  run "${GCLOUD[@]}" scp "$TPU:nclm_logs/train.log" "$LOGS/$TPU/worker-$w.log" --worker="$w" \
    "${FLAGS[@]}" || true
done
echo "tpu_pod.sh: logs in $LOGS/$TPU/ (exit status $status)"
exit "$status"
