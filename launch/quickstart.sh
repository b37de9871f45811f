#!/usr/bin/env bash
# The README's main job on a fresh machine, end to end on the CPU (about 20 minutes on 2 cores):
#   1. set up (.venv, espeak-ng), 2. synthesize a small multi-speaker corpus, split by speaker,
#   3. train a small DAC-style codec, 4. evaluate it on the held-out test speakers,
#   5. encode and decode a held-out utterance, printing the codes' shape and bitrate,
#   6. extract the corpus's codec tokens and phonemes, 7. train a tiny codec LM (VALL-E AR + NAR
#   and SoundStorm masked objectives on one parameter tree), 8. synthesize a sentence in a
#   held-out speaker's voice from a prompt (zero-shot TTS), with AR + NAR and masked decoding,
#   9. simulate SpeechX examples and fine-tune the LM on TTS and the five tasks together,
#   printing each task's validation accuracy, 10. enhance and edit held-out speech with it,
#   11. score the syntheses, the enhanced speech and the edit (nclm eval score).
# Everything lands in runs/quickstart/ (or $1). Re-running resumes training where it stopped.
# QUICKSTART_STEPS / QUICKSTART_LM_STEPS / QUICKSTART_SX_STEPS override the training steps
# (default 500 / 250 / 100); QUICKSTART_SX_EXAMPLES the simulated training examples (288).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
run=${1:-runs/quickstart}
steps=${QUICKSTART_STEPS:-500}
lm_steps=${QUICKSTART_LM_STEPS:-250}
sx_steps=${QUICKSTART_SX_STEPS:-100}
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

# ---- SpeechX tasks on the same tree ---------------------------------------------------------------
# Simulated examples of TTS and the five tasks (noise: generated, babble of other speakers and,
# where Debian's sound-theme-freedesktop is installed, its recordings; interfering speakers; edits
# at utterance boundaries), then the TTS LM fine-tuned on all six together (configs/lm/speechx.py).
noise=()
sounds=/usr/share/sounds/freedesktop/stereo
if [ -d "$sounds" ]; then
  mkdir -p "$run/noise/freedesktop"
  for f in "$sounds"/*.oga; do  # not the spoken channel names, not the links to other files
    case "$(basename "$f")" in audio-channel-*) ;; *) [ -L "$f" ] || cp "$f" "$run/noise/freedesktop/" ;; esac
  done
  nclm data manifest --layout folder "$run/noise" --out "$run/noise_manifest" --valid 0 --test 0
  noise=(--noise "$run/noise_manifest/train.jsonl")
else
  echo "quickstart: no $sounds (Debian's sound-theme-freedesktop): generated noise only"
fi
for split in train valid; do  # held-out speakers for validation, their own seed
  count=$([ $split = train ] && echo "${QUICKSTART_SX_EXAMPLES:-288}" || echo 48)
  nclm simulate --config configs/lm/speechx.py --codec "$codec" --manifest "$run/corpus/$split.jsonl" \
    --symbols "$run/tokens/train/symbols.json" --out "$run/tokens/speechx_$split" \
    --num-examples "$count" --config.seed=$([ $split = train ] && echo 0 || echo 1) "${noise[@]}"
done
nclm train --config "configs/lm/speechx.py:steps=$sx_steps" --workdir "$run/speechx_run" \
  --config.init_from="$run/lm_run/lm" --config.train.eval_every="$sx_steps" \
  --config.data.max_tokens=2048 --config.data.eval_batches=64 \
  --config.data.train="$run/tokens/speechx_train" --config.data.valid="$run/tokens/speechx_valid"

# held-out inputs: a test speaker's utterance under pink noise at 5 dB SNR to enhance, and two of
# their shortest utterances back to back whose second one is replaced by another's words
read -r span new_text < <(python - "$run" <<'PY'
import json, os, sys
import numpy as np
import soundfile as sf
from nclm.audio.noise import coloured_noise, mix_at_snr
run = sys.argv[1]
rows = [json.loads(line) for line in open(f"{run}/corpus/test.jsonl")]
audio = lambda r: os.path.join(f"{run}/corpus", r["audio"])
speaker = rows[0]["speaker"]
mine = sorted((r for r in rows if r["speaker"] == speaker), key=lambda r: r["duration"])
clean, rate = sf.read(audio(mine[1]), dtype="float32")
noise = coloured_noise(np.random.default_rng(0), len(clean), "pink")
mix, clean, _ = mix_at_snr(clean, noise, 5.0)
sf.write(f"{run}/sx_clean.wav", clean, rate)
sf.write(f"{run}/sx_noisy.wav", mix, rate)
first, second = (sf.read(audio(r), dtype="float32")[0] for r in mine[:2])
sf.write(f"{run}/sx_edit_input.wav", np.concatenate([first, second]), rate)
span = f"{len(first) / rate:.3f}:{(len(first) + len(second)) / rate:.3f}"
print(span, mine[0]["text"], mine[2]["text"])  # the new transcript: first, then another's words
json.dump({"span": span, "text": f"{mine[0]['text']} {mine[2]['text']}",
           "clean_text": mine[1]["text"]}, open(f"{run}/sx_inputs.json", "w"))
PY
)
sx="$run/speechx_run/lm"
nclm enhance "$run/sx_noisy.wav" "$run/sx_enhanced.wav" --lm "$sx" --codec "$codec"
nclm enhance "$run/sx_noisy.wav" "$run/sx_enhanced_masked.wav" --lm "$sx" --codec "$codec" \
  --mode masked
nclm edit "$run/sx_edit_input.wav" --span "$span" --text "$new_text" "$run/sx_edited.wav" \
  --lm "$sx" --codec "$codec"
python - "$run" <<'PY'
# SpeechX summary: validation accuracy per task on held-out speakers
import json, sys
run = sys.argv[1]
rows = [json.loads(line) for line in open(f"{run}/speechx_run/metrics.jsonl")]
ev = [r for r in rows if any(k.endswith("/ar/top1") for k in r)][-1]
tasks = [t for t in ("tts", "ns", "sr", "tse", "cse", "nse") if f"eval/{t}/ar/top1" in ev]
print(f"SpeechX validation top-1 at step {ev['step']} (held-out speakers; AR level 1, NAR "
      "levels 2+, masked all levels):")
print("  task  " + "".join(f"{t:>7}" for t in tasks))
for obj in ("ar", "nar", "masked"):
    print(f"  {obj:<6}" + "".join(
        f"{ev[f'eval/{t}/{obj}/top1']:7.3f}" if f"eval/{t}/{obj}/top1" in ev else f"{'-':>7}"
        for t in tasks))
print(f"run: {run}/speechx_run (lm/), {run}/sx_noisy.wav -> sx_enhanced.wav (AR + NAR), "
      f"sx_enhanced_masked.wav (masked); {run}/sx_edit_input.wav -> sx_edited.wav")
PY

# ---- scoring the generated speech (nclm eval) ---------------------------------------------------
# TTS: WER (pocketsphinx), SIM to the prompt (resemblyzer) and DNSMOS of both syntheses; enhance:
# PESQ-WB, STOI, SI-SDR against the clean speech, next to the noisy input's own; edit: WER of the
# new transcript, SIM, mel distance outside the span. pocketsphinx cannot follow espeak-ng's
# formant voices and these LMs trained for minutes: a check that the evaluation runs, not a
# measurement.
python - "$run" <<'PY'
import json, sys
import soundfile as sf
run = sys.argv[1]
sx = json.load(open(f"{run}/sx_inputs.json"))
rows = [{"id": name, "audio": f"{name}.wav", "prompt": "tts_prompt.wav",
         "text": "The quick brown fox jumps over the lazy dog.", "task": "tts"}
        for name in ("tts", "tts_masked")]
rows += [{"id": name, "audio": f"{name}.wav", "reference": "sx_clean.wav",
          "text": sx["clean_text"], "task": "ns"}
         for name in ("sx_noisy", "sx_enhanced", "sx_enhanced_masked")]
rows.append({"id": "sx_edited", "audio": "sx_edited.wav", "reference": "sx_edit_input.wav",
             "span": [float(x) for x in sx["span"].split(":")], "text": sx["text"],
             "task": "edit"})
with open(f"{run}/eval_rows.jsonl", "w") as f:
    for row in rows:
        if sf.info(f"{run}/{row['audio']}").frames:  # a model this small may stop at once
            f.write(json.dumps(row) + "\n")
PY
nclm eval score "$run/eval_rows.jsonl" --out "$run/gen_eval"
python - "$run" <<'PY'
# per output, so the enhanced speech stands next to the noisy input it came from
import json, sys
names = {"pesq_wb": "PESQ-WB", "stoi": "STOI", "si_sdr": "SI-SDR dB", "wer": "WER", "sim": "SIM",
         "mel_outside_edit": "mel L1 outside the edit"}
for r in map(json.loads, open(f"{sys.argv[1]}/gen_eval/rows.jsonl")):
    scores = [f"{v} {r[k]:.3f}" for k, v in names.items() if isinstance(r.get(k), (int, float))]
    print(f"  {r['id']:<19} {r['task']:<5} " + ", ".join(scores))
PY
