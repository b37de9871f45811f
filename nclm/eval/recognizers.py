"""Speech recognizers for WER: pocketsphinx by default, or a local transformers checkpoint.

    asr = load_recognizer("pocketsphinx")          # the wheel's en-us model, runs offline
    asr = load_recognizer("models/hubert-large-ls960-ft")   # any local CTC directory
    asr = load_recognizer("models/whisper-small.en")        # or a local Whisper directory
    asr.transcribe(wav_16k)                        # float32[S] at 16 kHz -> "the words"
    asr.identity                                   # {"name", "package", "version", "weights", ...}

Every recognizer takes 16 kHz mono float audio (the caller resamples) and is deterministic:
pocketsphinx decodes with its default search, CTC takes the argmax path, Whisper decodes greedily.
Numbers are only comparable between runs with the same `identity` (VALL-E used HuBERT-large
fine-tuned on LibriSpeech 960 h; pocketsphinx is far weaker, so its WERs are much higher).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from nclm.eval.extra import evaluator_version, file_digest, require

SAMPLE_RATE = 16000


class Recognizer(Protocol):
    identity: dict

    def transcribe(self, wav: np.ndarray) -> str: ...


class PocketSphinx:
    """CMU pocketsphinx 5 with the en-us acoustic model, dictionary and 3-gram LM of its wheel."""

    def __init__(self):
        ps = require("pocketsphinx", "the pocketsphinx recognizer")
        self._decoder = ps.Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
        config = ps.Config()
        hmm, lm, dic = config["hmm"], config["lm"], config["dict"]
        self.identity = {
            "name": "pocketsphinx",
            "package": "pocketsphinx",
            "version": evaluator_version("pocketsphinx"),
            "weights": "en-us (acoustic model, cmudict-en-us.dict, en-us.lm.bin) from the wheel",
            "sha256": file_digest(Path(hmm) / "mdef", Path(hmm) / "means", lm, dic),
        }

    def transcribe(self, wav: np.ndarray) -> str:
        pcm = (np.clip(wav, -1.0, 1.0) * 32767).astype("<i2")
        self._decoder.start_utt()
        self._decoder.process_raw(pcm.tobytes(), full_utt=True)
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


def _transformers_identity(directory: Path, kind: str) -> dict:
    weights = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    return {
        "name": kind,
        "package": "transformers",
        "version": evaluator_version("transformers"),
        "weights": str(directory),
        "sha256": file_digest(*weights) if weights else "none",
    }


class TransformersCTC:
    """A local `AutoModelForCTC` directory (wav2vec 2.0, HuBERT, WavLM fine-tuned for CTC) with
    its processor; greedy (argmax) CTC decoding, no language model."""

    def __init__(self, directory: Path):
        transformers = require("transformers", "a transformers CTC recognizer")
        self._torch = require("torch", "a transformers CTC recognizer")
        self._processor = transformers.AutoProcessor.from_pretrained(directory)
        self._model = transformers.AutoModelForCTC.from_pretrained(directory).eval()
        self.identity = _transformers_identity(directory, "transformers-ctc")

    def transcribe(self, wav: np.ndarray) -> str:
        inputs = self._processor(wav, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        with self._torch.no_grad():
            logits = self._model(inputs.input_values).logits  # [1, T, V]
        return self._processor.batch_decode(logits.argmax(-1))[0]


class Whisper:
    """A local Whisper directory (`WhisperForConditionalGeneration` + processor), English,
    greedy decoding of 30 s windows (longer audio is cut to its first 30 s)."""

    def __init__(self, directory: Path):
        transformers = require("transformers", "a Whisper recognizer")
        self._torch = require("torch", "a Whisper recognizer")
        self._processor = transformers.WhisperProcessor.from_pretrained(directory)
        model = transformers.WhisperForConditionalGeneration.from_pretrained(directory)
        self._model = model.eval()
        self.identity = _transformers_identity(directory, "whisper")

    def transcribe(self, wav: np.ndarray) -> str:
        inputs = self._processor(wav, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        kwargs = {"language": "en", "task": "transcribe"}
        if getattr(self._model.generation_config, "is_multilingual", True) is False:
            kwargs = {}
        with self._torch.no_grad():
            ids = self._model.generate(inputs.input_features, do_sample=False, **kwargs)
        return self._processor.batch_decode(ids, skip_special_tokens=True)[0]


def load_recognizer(spec: str | os.PathLike) -> Recognizer:
    """ "pocketsphinx", or a local transformers directory (Whisper when its config says so)."""
    if str(spec) == "pocketsphinx":
        return PocketSphinx()
    directory = Path(spec)
    config = directory / "config.json"
    if not config.is_file():
        raise ValueError(
            f"--recognizer {spec}: expected 'pocketsphinx' or a local transformers model "
            "directory with config.json (weights are never downloaded)"
        )
    try:
        model_type = json.loads(config.read_text()).get("model_type", "")
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--recognizer {config}: unreadable model config ({e})") from None
    return Whisper(directory) if model_type == "whisper" else TransformersCTC(directory)
