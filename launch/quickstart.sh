#!/usr/bin/env bash
# The README's main job on a fresh machine, end to end on the CPU (about 20 minutes on 2 cores):
#   1. set up (.venv, espeak-ng), 2. synthesize a small multi-speaker corpus, split by speaker,
#   3. train a small DAC-style codec, 4. evaluate it on the held-out test speakers,
#   5. encode and decode a held-out utterance, printing the codes' shape and bitrate,
#   6. extract the corpus's codec tokens and phonemes, 7. train a tiny codec LM (VALL-E AR + NAR
#   and SoundStorm masked objectives on one parameter tree), 8. synthesize a sentence in a
#   held-out speaker's voice from a prompt (zero-shot TTS), with AR + NAR and masked decoding.
# Everything lands in runs/quickstart/ (or $1). Re-running resumes training where it stopped.
# QUICKSTART_STEPS / QUICKSTART_LM_STEPS override the training steps (default 500 / 250).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
run=${1:-runs/quickstart}
steps=${QUICKSTART_STEPS:-500}
lm_steps=${QUICKSTART_LM_STEPS:-250}
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
# codec summary
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

# ---- the codec language model -------------------------------------------------------------------
codec="$run/codec_run/codec"
nclm tokens extract --codec "$codec" --manifest "$run/corpus/train.jsonl" --out "$run/tokens/train"
for split in valid test; do  # held-out splits reuse the training split's symbol table
  nclm tokens extract --codec "$codec" --manifest "$run/corpus/$split.jsonl" \
    --out "$run/tokens/$split" --symbols "$run/tokens/train/symbols.json"
done

nclm train --config "configs/lm/quickstart.py:steps=$lm_steps" --workdir "$run/lm_run" \
  --config.data.train="$run/tokens/train" --config.data.valid="$run/tokens/valid"

# zero-shot TTS: the voice prompt is a held-out test speaker's utterance (the one nearest 2.5 s:
# the tiny LM saw utterances of at most 5.4 s, prompt and speech together) and its transcript
{ read -r prompt; read -r prompt_text; } < <(python - "$run/corpus/test.jsonl" <<'PY'
import json, os, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
row = min(rows, key=lambda r: abs(r["duration"] - 2.5))
print(os.path.join(os.path.dirname(sys.argv[1]), row["audio"]))  # join keeps absolute paths
print(row["text"])
PY
)
cp "$prompt" "$run/tts_prompt.wav"
nclm tts --lm "$run/lm_run/lm" --codec "$codec" --prompt "$prompt" --prompt-text "$prompt_text" \
  --text "The quick brown fox jumps over the lazy dog." --out "$run/tts.wav" --seed 0
nclm tts --lm "$run/lm_run/lm" --codec "$codec" --prompt "$prompt" --prompt-text "$prompt_text" \
  --text "The quick brown fox jumps over the lazy dog." --out "$run/tts_masked.wav" --seed 0 \
  --mode masked
python - "$run" <<'PY'
# LM summary
import json, sys
run = sys.argv[1]
rows = [json.loads(line) for line in open(f"{run}/lm_run/metrics.jsonl")]
ev = [r for r in rows if "eval/ar/loss" in r][-1]
levels = sorted({k.split("/")[1] for k in ev if k.startswith("eval/nar_")})
print(f"LM validation (held-out speakers) at step {ev['step']}: AR loss {ev['eval/ar/loss']:.3f} "
      f"top-1 {ev['eval/ar/top1']:.3f}; NAR top-1 " + ", ".join(
          f"{lvl[4:]}: {ev[f'eval/{lvl}/top1']:.3f}" for lvl in levels))
print("masked (SoundStorm) top-1 per level: " + ", ".join(
    f"{k.split('/')[1][7:]}: {v:.3f}" for k, v in ev.items()
    if k.startswith("eval/masked_") and k.endswith("/top1")))
print(f"run: {run}/lm_run (checkpoints, metrics.jsonl, lm/), {run}/tts.wav (AR + NAR) and "
      f"{run}/tts_masked.wav (masked), prompt: {run}/tts_prompt.wav")
PY

# ---- scoring the generated speech (nclm eval) ---------------------------------------------------
# WER (pocketsphinx), SIM to the prompt (resemblyzer) and DNSMOS of both syntheses. pocketsphinx
# cannot follow espeak-ng's formant voices and this LM has trained for minutes: a check that the
# evaluation runs, not a measurement.
python - "$run" <<'PY'
import json, sys
import soundfile as sf
run = sys.argv[1]
with open(f"{run}/tts_rows.jsonl", "w") as f:
    for name in ("tts", "tts_masked"):
        if sf.info(f"{run}/{name}.wav").frames:  # a model this small may stop at once
            f.write(json.dumps({"id": name, "audio": f"{name}.wav", "prompt": "tts_prompt.wav",
                                "text": "The quick brown fox jumps over the lazy dog.",
                                "task": "tts"}) + "\n")
PY
nclm eval score "$run/tts_rows.jsonl" --out "$run/tts_eval"
