"""Noise made locally, and mixing in the waveform domain at a requested SNR or level.

    rng = np.random.default_rng([seed, index])
    n = coloured_noise(rng, num_samples, "pink")          # white | pink | brown
    n = tone_noise(rng, num_samples, sample_rate)           # a few sine partials, slow vibrato
    n = modulated_noise(rng, num_samples, sample_rate)      # pink noise under a 1-8 Hz envelope
    n = babble(rng, [wav, ...], num_samples)                # other speakers summed
    mix, s, n = mix_at_snr(speech, n, snr=5.0)              # mix = s + n, 10 log10(Ps/Pn) = 5

Every generator draws only from the `rng` it is given (numpy's PCG64), so an example is a function
of its seed and nothing else. Signals are float64 internally (the SNR is exact to rounding) and
returned as float32; no generator clips. Powers are means over all samples (speech pauses
included), as the DNS Challenge and UniAudio's make_noisy scripts do.
"""

from __future__ import annotations

import numpy as np

COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f^exponent
KINDS = ("white", "pink", "brown", "tone", "modulated", "babble")


def coloured_noise(rng: np.random.Generator, num_samples: int, colour: str) -> np.ndarray:
    """float32[S] of unit RMS whose power spectral density falls as 1/f^a (white a = 0, pink 1,
    brown 2): white Gaussian noise shaped in the frequency domain (DC removed)."""
    if colour not in COLOURS:
        raise ValueError(f"noise colour {colour!r}: expected one of {sorted(COLOURS)}")
    white = rng.standard_normal(num_samples)
    spectrum = np.fft.rfft(white)
    f = np.fft.rfftfreq(num_samples)
    gain = np.zeros_like(f)
    gain[1:] = f[1:] ** (-COLOURS[colour] / 2)  # amplitude ~ f^(-a/2)
    out = np.fft.irfft(spectrum * gain, n=num_samples)
    return _unit_rms(out)


def tone_noise(rng: np.random.Generator, num_samples: int, sample_rate: int) -> np.ndarray:
    """float32[S], unit RMS: 1-4 sine partials at 60-3000 Hz with a slow vibrato (hum, whine,
    alarms)."""
    t = np.arange(num_samples) / sample_rate
    out = np.zeros(num_samples)
    for _ in range(int(rng.integers(1, 5))):
        freq = rng.uniform(60.0, min(3000.0, 0.45 * sample_rate))
        vibrato = 0.01 * freq * np.sin(2 * np.pi * rng.uniform(0.1, 2.0) * t)
        phase = 2 * np.pi * np.cumsum(freq + vibrato) / sample_rate + rng.uniform(0, 2 * np.pi)
        out += rng.uniform(0.3, 1.0) * np.sin(phase)
    return _unit_rms(out)


def modulated_noise(rng: np.random.Generator, num_samples: int, sample_rate: int) -> np.ndarray:
    """float32[S], unit RMS: pink noise under a raised-sine envelope of 1-8 Hz (machinery,
    rain gusts: noise whose level moves at syllable rates, harder than stationary noise)."""
    t = np.arange(num_samples) / sample_rate
    envelope = 1.0 + 0.9 * np.sin(2 * np.pi * rng.uniform(1.0, 8.0) * t + rng.uniform(0, 6.3))
    return _unit_rms(coloured_noise(rng, num_samples, "pink") * envelope)


def babble(rng: np.random.Generator, talkers: list[np.ndarray], num_samples: int) -> np.ndarray:
    """float32[S], unit RMS: the given utterances (other speakers), each looped to S samples from
    a random offset and normalised to unit RMS, summed."""
    if not talkers:
        raise ValueError("babble needs at least one other talker")
    out = np.zeros(num_samples)
    for wav in talkers:
        wav = np.asarray(wav, np.float64)
        if wav.size == 0 or not np.any(wav):
            continue
        start = int(rng.integers(0, wav.size))
        looped = np.resize(np.roll(wav, -start), num_samples)
        out += looped / np.sqrt(np.mean(looped**2) + 1e-20)
    return _unit_rms(out)


def make_noise(
    rng: np.random.Generator,
    kind: str,
    num_samples: int,
    sample_rate: int,
    talkers: list[np.ndarray] | None = None,
) -> np.ndarray:
    """One of KINDS (babble needs `talkers`)."""
    if kind in COLOURS:
        return coloured_noise(rng, num_samples, kind)
    if kind == "tone":
        return tone_noise(rng, num_samples, sample_rate)
    if kind == "modulated":
        return modulated_noise(rng, num_samples, sample_rate)
    if kind == "babble":
        return babble(rng, talkers or [], num_samples)
    raise ValueError(f"noise kind {kind!r}: expected one of {KINDS}")


def power(x: np.ndarray) -> float:
    return float(np.mean(np.asarray(x, np.float64) ** 2))


def snr_db(speech: np.ndarray, noise: np.ndarray) -> float:
    """10 log10(P_speech / P_noise), powers as means over all samples."""
    return 10.0 * np.log10(power(speech) / power(noise))


def noise_gain(speech: np.ndarray, noise: np.ndarray, snr: float) -> float:
    """g with 10 log10(P_speech / P(g noise)) = snr; silent speech or noise is an error."""
    p_s, p_n = power(speech), power(noise)
    if p_s <= 0 or p_n <= 0:
        raise ValueError("mix_at_snr: silent speech or noise has no SNR")
    return float(np.sqrt(p_s / (p_n * 10.0 ** (snr / 10.0))))


def headroom(*signals: np.ndarray, peak: float = 0.99) -> float:
    """The one factor (<= 1) that keeps every signal's peak under `peak` (int16 files clip)."""
    top = max((float(np.max(np.abs(x))) for x in signals if np.size(x)), default=0.0)
    return min(1.0, peak / top) if top > 0 else 1.0


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr: float):
    """(mixture, speech, noise), float32, with mixture = speech + noise and
    10 log10(P_speech / P_noise) = snr: the noise scaled, then all three by one factor when the
    mixture would peak above 0.99 (the SNR is unchanged). Lengths must match."""
    speech = np.asarray(speech, np.float64)
    noise = np.asarray(noise, np.float64)
    if speech.shape != noise.shape:
        raise ValueError(f"mix_at_snr: speech {speech.shape} and noise {noise.shape} differ")
    noise = noise * noise_gain(speech, noise, snr)
    scale = headroom(speech + noise)
    speech, noise = speech * scale, noise * scale
    return (speech + noise).astype(np.float32), speech.astype(np.float32), noise.astype(np.float32)


def _unit_rms(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return (x / np.sqrt(np.mean(x**2) + 1e-20)).astype(np.float32)
