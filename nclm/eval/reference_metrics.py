"""Metrics of an output against a reference signal, after resampling and length alignment, plus
the speech-presence measure of speech removal.

    scores = intrusive(("pesq_wb", "si_sdr"), ref, est, sample_rate)   # {"pesq_wb": .., ...}
    mel_outside_span(ref, est, sample_rate, (1.2, 2.0))   # editing: change outside the span
    speech_fraction(wav_16k)                              # 0..1 of 30 ms frames with voice

The signal metrics are `nclm.audio.metrics` (the same functions `nclm codec eval` reports). The
caller loads the reference at the output's sample rate (soxr); `align` then trims both to the
shorter length, from the start: generated and transformed speech starts at sample 0 of the
reference (SpeechX's enhancement, extraction and removal keep the input's length).
"""

from __future__ import annotations

import numpy as np

from nclm.eval.extra import require

INTRUSIVE = ("pesq_wb", "stoi", "si_sdr", "mel_distance", "mcd")
LENGTH_TOLERANCE = 0.05  # warn when output and reference lengths differ by more than this


def align(ref: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Both trimmed to the shorter length; a note when they differed by > LENGTH_TOLERANCE."""
    n = min(len(ref), len(est))
    note = None
    if abs(len(ref) - len(est)) > LENGTH_TOLERANCE * len(ref):
        note = (
            f"output has {len(est)} samples and reference {len(ref)}; both trimmed to {n} "
            "for the intrusive metrics"
        )
    return ref[:n], est[:n], note


def intrusive(
    names: tuple[str, ...], ref: np.ndarray, est: np.ndarray, sample_rate: int
) -> dict[str, float]:
    """The named `INTRUSIVE` metrics of est against ref (equal lengths, one sample rate)."""
    from nclm.audio import metrics

    functions = {
        "pesq_wb": lambda: (require("pesq", "PESQ"), metrics.pesq_wb(ref, est, sample_rate))[1],
        "stoi": lambda: (require("pystoi", "STOI"), metrics.stoi(ref, est, sample_rate))[1],
        "si_sdr": lambda: metrics.si_sdr(ref, est),
        "mel_distance": lambda: metrics.mel_distance(ref, est, sample_rate),
        "mcd": lambda: metrics.mcd(ref, est, sample_rate),
    }
    return {name: float(functions[name]()) for name in names}


def mel_outside_span(
    ref: np.ndarray, est: np.ndarray, sample_rate: int, span: tuple[float, float]
) -> float:
    """Speech editing replaces ref[start:end] (seconds) and may change its length, so the audio
    before the span is compared from the start and the audio after it from the end:

        ref[:start] vs est[:start]   and   ref[end:] vs est[len(est) - (len(ref) - end):]

    The mean `mel_distance` of the two parts, weighted by their lengths; near zero when the
    editor left the context alone. ValueError when the span leaves < 0.1 s outside it."""
    from nclm.audio.metrics import mel_distance

    start, end = round(span[0] * sample_rate), round(span[1] * sample_rate)
    tail = len(ref) - end
    parts = []
    if start > 0:
        parts.append((ref[:start], est[:start]))
    if tail > 0 and len(est) >= tail:
        parts.append((ref[end:], est[len(est) - tail :]))
    parts = [(a, b) for a, b in parts if len(a) == len(b) and len(a) >= sample_rate // 10]
    if not parts:
        raise ValueError(
            f"span {list(span)} s leaves less than 0.1 s of unedited audio to compare "
            f"(reference {len(ref) / sample_rate:.2f} s, output {len(est) / sample_rate:.2f} s)"
        )
    total = sum(len(a) for a, _ in parts)
    return float(sum(len(a) * mel_distance(a, b, sample_rate) for a, b in parts) / total)


def speech_fraction(wav: np.ndarray, sample_rate: int = 16000, aggressiveness: int = 3) -> float:
    """Fraction of 30 ms frames that webrtcvad (most aggressive mode) classifies as speech:
    how much speech a speech-removal output still holds (0 when none is left)."""
    webrtcvad = require("webrtcvad", "the speech-presence measure (webrtcvad)")
    vad = webrtcvad.Vad(aggressiveness)
    frame = sample_rate * 30 // 1000
    pcm = (np.clip(wav, -1.0, 1.0) * 32767).astype("<i2")
    num_frames = len(pcm) // frame
    if num_frames == 0:
        raise ValueError(f"speech_fraction: expected at least 30 ms of audio, got {len(pcm)}")
    voiced = sum(
        vad.is_speech(pcm[i * frame : (i + 1) * frame].tobytes(), sample_rate)
        for i in range(num_frames)
    )
    return voiced / num_frames
