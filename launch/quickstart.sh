#!/usr/bin/env bash
# The README's main job on a fresh machine, end to end on the CPU (about 15 minutes on 2 cores):
#   1. set up (.venv, espeak-ng), 2. synthesize a small multi-speaker corpus, split by speaker,
#   3. train a small DAC-style codec, 4. evaluate it on the held-out test speakers,
#   5. encode and decode a held-out utterance, printing the codes' shape and bitrate.
# Everything lands in runs/quickstart/ (or $1). Re-running resumes training where it stopped.
# QUICKSTART_STEPS overrides the number of training steps (default 500).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
run=${1:-runs/quickstart}
steps=${QUICKSTART_STEPS:-500}
mkdir -p "$run"

if [ ! -f "$run/corpus/test.jsonl" ]; then
  nclm data synth --out "$run/corpus" --speakers 16 --utterances 12 --valid 2 --test 2
fi

nclm train --config "configs/codec/quickstart.py:steps=$steps" --workdir "$run/codec_run" \
  --config.data.train="$run/corpus/train.jsonl" --config.data.valid="$run/corpus/valid.jsonl"

nclm codec eval --codec "$run/codec_run/codec" --manifest "$run/corpus/test.jsonl" \
  --out "$run/eval"

clip=$(python -c "import json,sys; r=json.loads(open(sys.argv[1]).readline()); print(r['audio'])" \
  "$run/corpus/test.jsonl")
case "$clip" in /*) ;; *) clip="$run/corpus/$clip" ;; esac
nclm codec encode --codec "$run/codec_run/codec" "$clip" "$run/codes.npz"
nclm codec decode --codec "$run/codec_run/codec" "$run/codes.npz" "$run/decoded.wav"
cp "$clip" "$run/reference.wav"
python - "$run" <<'PY'
import json, sys
import numpy as np
run = sys.argv[1]
codes = np.load(f"{run}/codes.npz")["codes"]
report = json.load(open(f"{run}/eval/metrics.json"))
q, t = codes.shape[-2:]
print(f"codes: int32[{q}, {t}], {report['num_levels']} levels of {report['codebook_size']} codes "
      f"= {report['bitrate_kbps']:g} kbps")
print("held-out speakers: " + ", ".join(
    f"{k} {v['mean']:.3f}" for k, v in report["metrics"].items() if v["mean"] is not None))
print(f"run: {run}/codec_run (checkpoints, metrics.jsonl, tensorboard/), "
      f"{run}/eval (metrics.json, codebook_usage.png), {run}/decoded.wav vs {run}/reference.wav")
PY
