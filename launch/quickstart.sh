#!/usr/bin/env bash
# The README's main job on a fresh machine: set up, make a speech clip locally with espeak-ng,
# build a small random codec, encode the clip to codes and decode them back.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
run=${1:-runs/quickstart}
mkdir -p "$run"

if command -v espeak-ng >/dev/null; then
  espeak-ng -v en-us -s 150 -w "$run/clip.wav" \
    "Neural codec language models turn speech into tokens, and tokens back into speech."
else  # no espeak-ng (not root): a synthetic voiced clip keeps the pipeline runnable
  python - "$run/clip.wav" <<'PY'
import sys, numpy as np, soundfile as sf
t = np.arange(int(2.5 * 16000)) / 16000
f0 = 130 + 20 * np.sin(2 * np.pi * 2 * t)
phase = 2 * np.pi * np.cumsum(f0) / 16000
wav = sum(np.sin(k * phase) / k for k in range(1, 8)) * 0.2 * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
sf.write(sys.argv[1], wav.astype(np.float32), 16000)
PY
fi

nclm codec init --config configs/codec/encodec_24khz.py:tiny --out "$run/codec"
nclm codec info --codec "$run/codec"
nclm codec encode --codec "$run/codec" "$run/clip.wav" "$run/codes.npz"
nclm codec decode --codec "$run/codec" "$run/codes.npz" "$run/decoded.wav"
python - "$run" <<'PY'
import sys, numpy as np
codes = np.load(f"{sys.argv[1]}/codes.npz")
q, t = codes["codes"].shape
print(f"codes: int32[{q}, {t}] at {float(codes['frame_rate']):g} Hz = "
      f"{float(codes['frame_rate']) * q * np.log2(int(codes['codebook_size'])) / 1000:g} kbps"
      if "codebook_size" in codes else f"codes: int32[{q}, {t}]")
print(f"decoded audio: {sys.argv[1]}/decoded.wav (a random codec: expect noise, not speech)")
PY
