#!/usr/bin/env bash
# Sourced by launch/quickstart.sh and launch/test.sh: makes .venv with nclm installed, on a fresh
# Debian/Ubuntu machine with Python >= 3.10 (Debian packages via apt-get when root and missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need_apt=()
python3 -c "import venv, ensurepip" 2>/dev/null || need_apt+=(python3-venv)
command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)   # speech for the quickstart corpus
command -v flite >/dev/null || need_apt+=(flite)   # voices pocketsphinx recognises (nclm eval tests)
# recorded non-speech sounds: the quickstart's SpeechX noise, besides the generated kinds
[ -d /usr/share/sounds/freedesktop/stereo ] || need_apt+=(sound-theme-freedesktop)
# webrtcvad (under resemblyzer, in the eval extra) has no wheels: pip compiles it
command -v gcc >/dev/null || need_apt+=(gcc)
python3 -c "import os, sysconfig; assert os.path.exists(sysconfig.get_paths()['include'] + '/Python.h')" \
  2>/dev/null || need_apt+=(python3-dev)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: apt-get install ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install the Debian packages: ${need_apt[*]}" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.nclm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing nclm and its dependencies into .venv (first run: a few minutes)"
  python -m pip install -q --upgrade pip
  # The CPU build of torch, pinned: an unpinned torch pulls several GB of CUDA packages.
  python -m pip install -q "torch==2.13.0"
  # eval: the offline evaluators of `nclm eval` (pocketsphinx, resemblyzer, speechmos, jiwer)
  python -m pip install -q -e ".[test,parity,eval]"
  # The published Vocos, the reference of the Vocos-EnCodec parity test. Without its declared
  # dependencies: they pin torchaudio and encodec, whose wheels need another torch; the test
  # uses only its backbone and iSTFT head (torch, numpy, scipy).
  python -m pip install -q --no-deps "vocos==0.1.0"
  # librosa (DNSMOS, resemblyzer) compiles its numba kernels on first use and caches them in
  # site-packages: once here (35 CPU-s) rather than inside the first evaluation or test
  python -W ignore -c "import numpy, librosa; librosa.feature.melspectrogram(y=numpy.ones(4000))"
  touch "$stamp"
fi
