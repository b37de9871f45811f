"""The offline evaluators on speech made here: each model is loaded once for the module."""

import sys

import numpy as np
import pytest

from nclm.audio.io import load_audio
from nclm.eval.extra import MissingEvaluator, require
from nclm.eval.wer import corpus_rate, word_errors
from tests.eval.conftest import SENTENCES


@pytest.fixture(scope="module")
def recognizer():
    from nclm.eval.recognizers import load_recognizer

    return load_recognizer("pocketsphinx")


@pytest.fixture(scope="module")
def speaker_encoder():
    from nclm.eval.speaker_sim import load_speaker_encoder

    return load_speaker_encoder("resemblyzer")


@pytest.fixture(scope="module")
def dnsmos():
    from nclm.eval.dnsmos import Dnsmos

    return Dnsmos()


def test_pocketsphinx_transcribes_flite_speech(recognizer, speech):
    counts = []
    for voice in ("slt", "awb"):
        for i in range(2):
            heard = recognizer.transcribe(load_audio(speech[voice, i], 16000))
            counts.append(word_errors(SENTENCES[i], heard))
    # 5 errors in 34 words here (0.15, 2026-11-30); audio at the wrong rate scores 1.0
    assert corpus_rate(counts) < 0.35
    assert recognizer.identity["name"] == "pocketsphinx"
    assert recognizer.identity["version"].startswith("5.")
    assert len(recognizer.identity["sha256"]) == 16


def test_similarity_ranks_the_same_voice_above_another(speaker_encoder, speech):
    from nclm.eval.speaker_sim import cosine

    emb = {
        (voice, i): speaker_encoder.embed(load_audio(path, 16000))
        for (voice, i), path in speech.items()
        if i < 2
    }
    voices = ("slt", "kal16", "awb")
    for voice in voices:
        same = cosine(emb[voice, 0], emb[voice, 1])  # two different sentences, one voice
        for other in voices:
            if other != voice:
                different = cosine(emb[voice, 0], emb[other, 1])
                assert same > different + 0.15, (voice, other, same, different)
    assert speaker_encoder.embed(np.zeros(16000, np.float32)) is None  # nothing to embed


def test_dnsmos_scores_clean_speech_above_speech_in_noise(dnsmos, speech):
    # 9.5 s: one 9.01 s DNSMOS window (a 2 s clip is repeated to 17.6 s and scored 9 times)
    clean = np.tile(load_audio(speech["slt", 1], 16000), 5)[: 16000 * 19 // 2]
    noise = np.random.default_rng(0).standard_normal(clean.size).astype(np.float32)
    noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2))  # 0 dB SNR
    noisy = 0.5 * (clean + noise)
    a, b = dnsmos.score(clean), dnsmos.score(noisy)
    assert set(a) == {"dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808"}
    assert a["dnsmos_ovrl"] > b["dnsmos_ovrl"] + 0.5, (a, b)
    assert a["dnsmos_bak"] > b["dnsmos_bak"] + 1.0, (a, b)
    # which score is which: synthetic speech has a clean background (BAK high) and a synthetic
    # voice (SIG lower), and OVRL sits below both; the noise is all background (BAK < 2)
    assert a["dnsmos_bak"] > 3.5 and b["dnsmos_bak"] < 2.0, (a, b)
    assert a["dnsmos_bak"] > a["dnsmos_sig"] > a["dnsmos_ovrl"], a
    assert all(1.0 <= v <= 5.0 for v in a.values())
    with pytest.raises(ValueError, match="at least 10 ms"):
        dnsmos.score(np.zeros(0, np.float32))


def test_a_missing_evaluator_names_the_extra(monkeypatch):
    for name in ("speechmos", "speechmos.dnsmos"):  # imports fail as if not installed
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingEvaluator, match=r"pip install 'nclm\[eval\]'") as e:
        require("speechmos.dnsmos", "DNSMOS (speechmos)")
    assert "\n" not in str(e.value)
