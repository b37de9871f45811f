"""DNSMOS (Reddy et al., arXiv 2110.01763): reference-free speech quality from the ONNX models
that the `speechmos` wheel ships, so it runs offline.

    dnsmos = Dnsmos()
    dnsmos.score(wav_16k)   # {"dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808"}: floats

P.835 (`sig_bak_ovr.onnx`): signal, background and overall quality, each mapped through DNSMOS's
published polynomial; P.808 (`model_v8.onnx`): one overall MOS from a log-mel input. Both score
9.01 s windows hopped by 1 s and average them; a clip shorter than 9.01 s is repeated until it is
that long by doubling (the reference `dnsmos_local.py` does the same), so a 2 s clip becomes
17.6 s and costs 9 windows. Scores run 1 (bad) to 5 (excellent).
Input: 16 kHz mono float audio in [-1, 1] (the caller resamples), at least 10 ms long.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nclm.eval.extra import evaluator_version, file_digest, require

SAMPLE_RATE = 16000
KEYS = {"sig_mos": "dnsmos_sig", "bak_mos": "dnsmos_bak", "ovrl_mos": "dnsmos_ovrl",
        "p808_mos": "dnsmos_p808"}  # fmt: skip


class Dnsmos:
    def __init__(self, num_threads: int = 1):
        dnsmos = require("speechmos.dnsmos", "DNSMOS (speechmos)")
        ort = require("onnxruntime", "DNSMOS (speechmos)")
        models = Path(dnsmos.__file__).parent / "dnsmos_models"
        p835, p808 = models / "sig_bak_ovr.onnx", models / "model_v8.onnx"
        options = ort.SessionOptions()
        # One thread per session by default: these are small convolutional models, and pools of
        # busy-waiting threads cost more CPU than they save on a shared machine.
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        # speechmos's DNSMOS object, with sessions built here (its __init__ takes no options):
        # __call__ does the windowing, the P.808 mel features and the P.835 polynomials.
        self._model = dnsmos.DNSMOS.__new__(dnsmos.DNSMOS)
        self._model.primary_model_path = str(p835)
        self._model.onnx_sess = ort.InferenceSession(str(p835), options, providers=providers)
        self._model.p808_onnx_sess = ort.InferenceSession(str(p808), options, providers=providers)
        self.identity = {
            "name": "dnsmos",
            "package": "speechmos",
            "version": evaluator_version("speechmos"),
            "onnxruntime": evaluator_version("onnxruntime"),
            "weights": "dnsmos_models/sig_bak_ovr.onnx (P.835) + model_v8.onnx (P.808)",
            "sha256": file_digest(p835, p808),
        }

    def score(self, wav: np.ndarray) -> dict[str, float]:
        wav = np.clip(np.asarray(wav, np.float32), -1.0, 1.0)
        if wav.size < SAMPLE_RATE // 100:  # speechmos would repeat an empty clip forever
            raise ValueError(f"DNSMOS: expected at least 10 ms of audio, got {wav.size} samples")
        out = self._model(wav, SAMPLE_RATE, False)
        return {name: float(out[key]) for key, name in KEYS.items()}
