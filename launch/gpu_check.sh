#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md's goals in one run (about 8 minutes on one H200):
#   codec x real time, batched and at batch 1   (goal: >= 3,000x batched, >= 100x at batch 1)
#   LM training MFU at VALL-E size, bf16        (goal: >= 45 %)
#   AR decoding at batch 1 and 64, 2,000-token context, VALL-E size, bf16
#                                               (goal: >= 2,000 and >= 700 steps/s)
#   masked generation of 30 s with the codec    (goal: <= 0.1 s)
# Each benchmark writes JSON; a table of figures against the goals goes to stdout and, when $OUT
# is set, to $OUT/gpu_check.md (with the JSON files beside it).
#
#   bash launch/gpu_check.sh             # on the GPU host
#   bash launch/gpu_check.sh --dry-run   # the same commands at tiny sizes on the CPU (CI, ~1 min)
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
DIR="${OUT:-$(mktemp -d)}"
mkdir -p "$DIR"
NCLM=(python -m nclm.cli)
start=$SECONDS
if [[ $DRY == 1 ]]; then
  export JAX_PLATFORMS=cpu
  CODEC=(--model dac_16khz --seconds 0.25 --batch 1 --repeats 1)
  TRAIN=(--config configs/lm/valle.py:smoke --batch 8 --text 8 --frames 16 --steps 1)
  DECODE=(--preset tiny --batch 1 --context 16 --steps 4 --repeats 1)
  MASKED=(--preset tiny --levels 2 --seconds 0.2 --prompt-seconds 0.1 --iterations 2,1 --repeats 1)
else
  CODEC=(--model encodec_24khz --seconds 10 --batch 64 --repeats 5)
  TRAIN=(--config configs/lm/valle.py --batch 16 --text 64 --frames 1024 --steps 10)
  DECODE=(--preset valle --batch 1 64 --context 2000 --steps 256 --repeats 3 --dtype bfloat16)
  MASKED=(--preset valle --levels 8 --seconds 30 --iterations 16,1 --repeats 3 --dtype bfloat16)
fi
"${NCLM[@]}" bench codec "${CODEC[@]}" --json "$DIR/codec.json"
"${NCLM[@]}" bench lm-train "${TRAIN[@]}" --peak-tflops 989 --json "$DIR/lm_train.json"
"${NCLM[@]}" bench lm-decode "${DECODE[@]}" --json "$DIR/lm_decode.json"
"${NCLM[@]}" bench masked "${MASKED[@]}" --json "$DIR/masked.json"
python - "$DIR" $((SECONDS - start)) $DRY <<'PY'
import json, os, sys

d, seconds, dry = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
load = lambda name: json.load(open(os.path.join(d, name)))
codec, train, decode, masked = (load(f"{n}.json") for n in ("codec", "lm_train", "lm_decode", "masked"))
rows = []
for r in codec["results"]:
    goal = 3000 if r["batch"] > 1 else 100
    rows.append((f"codec {r['op']} batch {r['batch']}", f"{r['nclm_xrt']:,.1f}x real time", f">= {goal:,}x"))
rows.append(("LM training MFU", f"{train['mfu']:.1%}", ">= 45%"))
for r in decode["results"]:
    goal = 2000 if r["batch"] == 1 else 700
    rows.append((f"AR decoding batch {r['batch']}, context {r['text'] + r['prompt']}",
                 f"{r['ar_steps_per_s']:,.0f} steps/s", f">= {goal:,} steps/s"))
rows.append((f"masked generation of {masked['seconds']:g} s + codec", f"{masked['total_s']:.3f} s", "<= 0.1 s"))
title = "dry run (tiny sizes, CPU: the goals do not apply)" if dry else "GPU check"
lines = [f"## {title}: {decode['devices']}, jax {decode['jax']}, {seconds} s", "",
         "| figure | measured | goal |", "|---|---:|---:|"]
lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
text = "\n".join(lines) + "\n"
print(text)
with open(os.path.join(d, "gpu_check.md"), "w") as f:
    f.write(text)
PY
