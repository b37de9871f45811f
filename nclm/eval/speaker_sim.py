"""Speaker similarity: the cosine between speaker embeddings of two clips.

    encoder = load_speaker_encoder("resemblyzer")            # the wheel's GE2E encoder, offline
    encoder = load_speaker_encoder("models/wavlm-base-plus-sv")   # a local WavLM x-vector dir
    sim = cosine(encoder.embed(out_16k), encoder.embed(prompt_16k))   # -1 .. 1, higher = closer

Inputs are 16 kHz mono float audio (the caller resamples). `embed` returns a unit vector, or
None when the clip holds no speech to embed (resemblyzer's voice activity trimming left nothing).
VALL-E's SIM uses WavLM-TDNN (WavLM-large + ECAPA-TDNN); resemblyzer is a 3-layer LSTM trained
with GE2E, so values are on another scale: compare runs only under the same `identity`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from nclm.eval.extra import evaluator_version, file_digest, require

SAMPLE_RATE = 16000


class SpeakerEncoder(Protocol):
    identity: dict

    def embed(self, wav: np.ndarray) -> np.ndarray | None: ...


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


class Resemblyzer:
    """resemblyzer's VoiceEncoder with its bundled `pretrained.pt`, after its own preprocessing
    (volume normalised to -30 dBFS, silences longer than ~0.2 s trimmed by webrtcvad)."""

    def __init__(self):
        resemblyzer = require("resemblyzer", "speaker similarity (resemblyzer)")
        self._torch = require("torch", "speaker similarity (resemblyzer)")
        self._preprocess = resemblyzer.preprocess_wav
        self._encoder = resemblyzer.VoiceEncoder(device="cpu", verbose=False)
        weights = Path(resemblyzer.__file__).parent / "pretrained.pt"
        self.identity = {
            "name": "resemblyzer",
            "package": "resemblyzer",
            "version": evaluator_version("resemblyzer"),
            "weights": "pretrained.pt (GE2E LSTM, 256-d) from the wheel",
            "sha256": file_digest(weights),
        }

    def embed(self, wav: np.ndarray) -> np.ndarray | None:
        if not np.any(wav):  # its volume normalisation would divide by the zero level
            return None
        wav = self._preprocess(np.asarray(wav, np.float32))  # no source_sr: already 16 kHz
        if wav.size < SAMPLE_RATE // 10:  # < 100 ms of voiced audio left: nothing to embed
            return None
        threads = self._torch.get_num_threads()
        self._torch.set_num_threads(1)  # a 3-layer LSTM: threads cost more than they save
        try:
            return np.asarray(self._encoder.embed_utterance(wav), np.float64)
        finally:
            self._torch.set_num_threads(threads)


class WavLMSpeakerVerification:
    """A local transformers `WavLMForXVector` directory (e.g. a copy of
    microsoft/wavlm-base-plus-sv) with its feature extractor; the x-vector embedding."""

    def __init__(self, directory: Path):
        transformers = require("transformers", "speaker similarity (WavLM)")
        self._torch = require("torch", "speaker similarity (WavLM)")
        self._features = transformers.AutoFeatureExtractor.from_pretrained(directory)
        self._model = transformers.WavLMForXVector.from_pretrained(directory).eval()
        weights = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
        self.identity = {
            "name": "wavlm-xvector",
            "package": "transformers",
            "version": evaluator_version("transformers"),
            "weights": str(directory),
            "sha256": file_digest(*weights) if weights else "none",
        }

    def embed(self, wav: np.ndarray) -> np.ndarray | None:
        if not np.any(wav):
            return None
        inputs = self._features(wav, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        with self._torch.no_grad():
            out = self._model(**inputs).embeddings[0].numpy().astype(np.float64)
        return out / np.linalg.norm(out)


def load_speaker_encoder(spec: str | os.PathLike) -> SpeakerEncoder:
    """ "resemblyzer", or a local WavLMForXVector directory."""
    if str(spec) == "resemblyzer":
        return Resemblyzer()
    config = Path(spec) / "config.json"
    if not config.is_file():
        raise ValueError(
            f"--speaker-encoder {spec}: expected 'resemblyzer' or a local transformers "
            "WavLMForXVector directory with config.json (weights are never downloaded)"
        )
    architectures = json.loads(config.read_text()).get("architectures") or []
    if "WavLMForXVector" not in architectures:
        raise ValueError(
            f"--speaker-encoder {spec}: config.json architectures {architectures}, expected "
            "WavLMForXVector (a speaker-verification checkpoint)"
        )
    return WavLMSpeakerVerification(Path(spec))
