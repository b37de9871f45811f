"""Recorded noise for simulation: crops of the files of a manifest of any audio.

    bank = RecordedNoise("noise/manifest.jsonl", sample_rate=16000)   # e.g. from
    #   nclm data manifest --layout folder MUSAN/noise --out noise   (or DNS, DEMAND, WHAM!)
    n = bank.draw(rng, num_samples)

A draw takes one file uniformly from `rng`, then a random stretch of it; a file shorter than the
request is looped from a random point (short recordings, e.g. a door bell, repeat). So like the
generated kinds in nclm.audio.noise, a draw is a function of the rng and the files alone. Every
file's header is checked when the bank is made (one line naming the manifest line); a file
that turns out silent fails at its first draw, naming it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from nclm.audio.io import AudioError, audio_info, load_audio
from nclm.data.manifest import read_manifest_lines, resolve_audio

SILENT_RMS = 1e-5  # below this a recording cannot be scaled to an SNR


class RecordedNoise:
    def __init__(self, manifest: str | os.PathLike, sample_rate: int, cache_files: int = 256):
        self.manifest = Path(manifest)
        self.sample_rate = sample_rate
        self.paths = []
        for number, record in read_manifest_lines(self.manifest):
            path = resolve_audio(self.manifest, record)
            try:
                audio_info(path)
            except (AudioError, RuntimeError, OSError) as e:
                raise AudioError(f"{self.manifest}:{number}: noise {path}: {e}") from None
            self.paths.append(path)
        if not self.paths:
            raise AudioError(f"{self.manifest}: no noise files")
        self._load = functools.lru_cache(maxsize=cache_files)(self._read)

    def _read(self, k: int) -> np.ndarray:
        wav = load_audio(self.paths[k], self.sample_rate)
        if not wav.size or np.sqrt(np.mean(np.square(wav, dtype=np.float64))) < SILENT_RMS:
            raise AudioError(f"{self.manifest}: noise {self.paths[k]} is silent; remove it")
        return wav

    def draw(self, rng: np.random.Generator, num_samples: int) -> np.ndarray:
        """float32[num_samples]: a stretch of one file, looped when the file is shorter."""
        k = int(rng.integers(len(self.paths)))
        wav = self._load(k)
        start = int(rng.integers(len(wav)))
        if len(wav) >= num_samples:
            start = start % (len(wav) - num_samples + 1)
            return wav[start : start + num_samples].astype(np.float32)
        return np.resize(np.roll(wav, -start), num_samples).astype(np.float32)
