"""Mel filterbanks (librosa's defaults: Slaney mel scale, Slaney area normalisation) and mel
spectrograms through our STFT.

Slaney mel scale (linear below 1 kHz, logarithmic above; 1 kHz = 15 mel, 6.4 kHz = 42 mel):

    mel(f) = 3 f / 200                              f < 1000 Hz
    mel(f) = 15 + 27 ln(f / 1000) / ln(6.4)         f >= 1000 Hz

Filter j (j = 0..M-1) is a triangle on the Hz axis between the mel-equispaced edges
f_j < f_{j+1} < f_{j+2} (M + 2 edges from mel(fmin) to mel(fmax)), evaluated on the FFT bin
frequencies f_k = k * sr / n_fft, k = 0..n_fft/2, and scaled to unit area ("slaney" norm):

    w[k, j] = 2 / (f_{j+2} - f_j) * max(0, min((f_k - f_j) / (f_{j+1} - f_j),
                                              (f_{j+2} - f_k) / (f_{j+2} - f_{j+1})))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nclm.audio.stft import stft

_LINEAR_HZ_PER_MEL = 200.0 / 3.0
_LOG_START_HZ = 1000.0
_LOG_START_MEL = _LOG_START_HZ / _LINEAR_HZ_PER_MEL  # 15
_LOG_STEP = np.log(6.4) / 27.0  # mel steps per ln(Hz) above 1 kHz


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale (librosa's `hz_to_mel(htk=False)`)."""
    f = np.asarray(f, dtype=np.float64)
    linear = f / _LINEAR_HZ_PER_MEL
    log = _LOG_START_MEL + np.log(np.maximum(f, _LOG_START_HZ) / _LOG_START_HZ) / _LOG_STEP
    return np.where(f >= _LOG_START_HZ, log, linear)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    m = np.asarray(m, dtype=np.float64)
    linear = m * _LINEAR_HZ_PER_MEL
    log = _LOG_START_HZ * np.exp(_LOG_STEP * (np.maximum(m, _LOG_START_MEL) - _LOG_START_MEL))
    return np.where(m >= _LOG_START_MEL, log, linear)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Slaney-normalised triangular filters, float32[n_fft // 2 + 1, n_mels] (librosa.filters.mel
    transposed, so `|X|[B, T, F] @ fb` is the mel spectrogram)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"mel_filterbank: need 0 <= fmin < fmax <= sr/2, got {fmin}, {fmax}")
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)  # [F], f_k = k sr / n_fft
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # [M + 2]
    widths = np.diff(edges)  # [M + 1]
    ramps = edges[:, None] - bins[None, :]  # [M + 2, F]
    rising = -ramps[:-2] / widths[:-1, None]  # (f_k - f_j) / (f_{j+1} - f_j)
    falling = ramps[2:] / widths[1:, None]  # (f_{j+2} - f_k) / (f_{j+2} - f_{j+1})
    weights = np.maximum(0.0, np.minimum(rising, falling))  # [M, F]
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.T.astype(np.float32)


def magnitude(spec: jax.Array, power: float = 1.0) -> jax.Array:
    """|spec|^power with a finite gradient at spec = 0 (jnp.abs's is NaN there, and silent padded
    frames are exactly 0)."""
    p = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    positive = p > 0
    return jnp.where(positive, jnp.where(positive, p, 1.0) ** (power / 2), 0.0)


def mel_spectrogram(
    wav: jax.Array,
    sample_rate: int,
    n_fft: int,
    hop: int,
    n_mels: int,
    power: float = 1.0,
    padding: str = "center",
    fmin: float = 0.0,
    fmax: float | None = None,
) -> jax.Array:
    """wav[B, S] -> |STFT|^power @ mel_filterbank, float32[B, T, n_mels] (Hann window of n_fft;
    `padding` as in `stft`: "center" gives T = S // hop + 1)."""
    spec = stft(wav.astype(jnp.float32), n_fft, hop, padding)  # [B, T, F]
    fb = jnp.asarray(mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax))  # [F, M]
    return jnp.einsum("btf,fm->btm", magnitude(spec, power), fb)
