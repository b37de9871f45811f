"""Mel filterbank against the Slaney formulas written out directly (librosa's defaults), its basic
properties, and mel spectrograms of sines."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nclm.audio.mel import hz_to_mel, mel_filterbank, mel_spectrogram, mel_to_hz


def _slaney_mel(f: float) -> float:
    """3 f / 200 below 1 kHz; 15 + 27 ln(f / 1000) / ln(6.4) above."""
    return 3 * f / 200 if f < 1000 else 15 + 27 * math.log(f / 1000) / math.log(6.4)


def _slaney_hz(m: float) -> float:
    return 200 * m / 3 if m < 15 else 1000 * math.exp((m - 15) * math.log(6.4) / 27)


def _direct_filterbank(sr, n_fft, n_mels, fmin=0.0, fmax=None) -> np.ndarray:
    """One weight at a time: triangle over edges (f_j, f_{j+1}, f_{j+2}), scaled by
    2 / (f_{j+2} - f_j) so each filter has unit area in Hz."""
    fmax = sr / 2 if fmax is None else fmax
    lo, hi = _slaney_mel(fmin), _slaney_mel(fmax)
    edges = [_slaney_hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    out = np.zeros((n_fft // 2 + 1, n_mels))
    for j in range(n_mels):
        left, centre, right = edges[j], edges[j + 1], edges[j + 2]
        for k in range(n_fft // 2 + 1):
            f = k * sr / n_fft
            tri = max(0.0, min((f - left) / (centre - left), (right - f) / (right - centre)))
            out[k, j] = tri * 2 / (right - left)
    return out


def test_slaney_mel_scale_points():
    np.testing.assert_allclose(hz_to_mel([0.0, 200 / 3, 1000.0, 6400.0]), [0, 1, 15, 42])
    f = np.array([0.0, 55.0, 999.0, 1000.0, 1001.0, 4000.0, 22050.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f)), f, rtol=1e-12, atol=1e-9)
    assert all(math.isclose(hz_to_mel(x), _slaney_mel(x)) for x in (300.0, 2500.0, 7000.0))


@pytest.mark.parametrize(
    "sr,n_fft,n_mels,fmin,fmax",
    [
        (16000, 1024, 40, 0.0, None),
        (24000, 512, 80, 0.0, None),
        (22050, 2048, 128, 50.0, 8000.0),
        (16000, 32, 5, 0.0, None),
        (44100, 2048, 320, 0.0, None),
    ],
)
def test_filterbank_matches_direct_formula(sr, n_fft, n_mels, fmin, fmax):
    fb = mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    assert fb.shape == (n_fft // 2 + 1, n_mels) and fb.dtype == np.float32
    ref = _direct_filterbank(sr, n_fft, n_mels, fmin, fmax)
    np.testing.assert_allclose(fb, ref, rtol=1e-5, atol=1e-7 * ref.max())


def test_filterbank_properties():
    sr, n_fft, n_mels = 16000, 1024, 40
    fb = mel_filterbank(sr, n_fft, n_mels)
    assert (fb >= 0).all() and (fb.max(axis=0) > 0).all()  # no empty filter at this resolution
    edges = mel_to_hz(np.linspace(0, hz_to_mel(sr / 2), n_mels + 2))
    bin_hz = sr / n_fft
    for j in range(n_mels):
        centre = edges[j + 1] / bin_hz  # in bins
        assert math.floor(centre) <= np.argmax(fb[:, j]) <= math.ceil(centre), j
        # support strictly inside (f_j, f_{j+2})
        support = np.nonzero(fb[:, j])[0] * bin_hz
        assert edges[j] < support.min() and support.max() < edges[j + 2]
        if edges[j + 2] - edges[j] > 20 * bin_hz:  # wide enough for a Riemann sum: unit area
            np.testing.assert_allclose(fb[:, j].sum() * bin_hz, 1.0, rtol=0.02)


def test_filterbank_rejects_bad_range():
    with pytest.raises(ValueError, match="fmin < fmax"):
        mel_filterbank(16000, 512, 40, fmin=4000, fmax=2000)


def test_mel_spectrogram_of_sines_peaks_at_their_filter():
    """A sine at a filter's centre frequency lands in that filter: neighbouring triangles are zero
    at that centre, and the Hann leakage (about +-2 bins) stays inside its own triangle."""
    sr, n_fft, hop, n_mels = 16000, 1024, 256, 40
    edges = mel_to_hz(np.linspace(0, hz_to_mel(sr / 2), n_mels + 2))
    targets = [6, 20, 33]
    t = np.arange(sr // 2) / sr
    wav = np.stack([np.sin(2 * np.pi * edges[j + 1] * t) for j in targets]).astype(np.float32)
    mel = np.asarray(mel_spectrogram(jnp.asarray(wav), sr, n_fft, hop, n_mels))
    assert mel.shape == (3, len(t) // hop + 1, n_mels)  # centered frames: S // hop + 1
    inner = mel[:, 4:-4]  # frames away from the reflected edges
    assert (np.argmax(inner, axis=-1) == np.array(targets)[:, None]).all()


def test_mel_spectrogram_power_and_zero_gradient():
    """power=2 squares the magnitudes before the filterbank; silence has a finite gradient."""
    sr, n_fft, hop, n_mels = 16000, 256, 64, 20
    x = np.random.default_rng(0).standard_normal((1, 2048)).astype(np.float32)
    fb = mel_filterbank(sr, n_fft, n_mels)
    padded = np.pad(x[0], n_fft // 2, mode="reflect")
    frames = np.stack([padded[i : i + n_fft] for i in range(0, len(padded) - n_fft + 1, hop)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    got = np.asarray(mel_spectrogram(jnp.asarray(x), sr, n_fft, hop, n_mels, power=2.0))[0]
    np.testing.assert_allclose(got, power @ fb, rtol=1e-4, atol=1e-3)

    grad = jax.grad(lambda w: jnp.sum(mel_spectrogram(w, sr, n_fft, hop, n_mels)))(
        jnp.zeros((1, 1024))
    )
    assert np.isfinite(np.asarray(grad)).all()
