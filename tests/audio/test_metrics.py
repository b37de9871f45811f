"""Signal metrics on constructed signals whose answers are known: SI-SDR at an exact SNR, PESQ and
STOI at their ends of the scale, MCD zero for a copy, codebook usage of uniform and constant
codes."""

import numpy as np
import pytest

from nclm.audio.mel import mel_spectrogram
from nclm.audio.metrics import (
    code_counts,
    codebook_usage,
    dtw_path,
    log_mel,
    mcd,
    mel_distance,
    pesq_wb,
    si_sdr,
    stoi,
    usage_from_counts,
)

SR = 16000


def _speech_like(seconds: float, sample_rate: int = SR, seed: int = 0) -> np.ndarray:
    """Voiced 'syllables': a gliding 100-170 Hz harmonic source with moving formant-like band
    gains, gated at 2.5 Hz, so that PESQ's VAD and STOI's silence removal find speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    f0 = 135 + 35 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    x = np.zeros_like(t)
    for h in range(1, int(sample_rate / 2 / f0.max())):
        formant = 1 + 0.8 * np.sin(2 * np.pi * (0.5 + 0.3 * (h % 5)) * t + h)
        x += np.sin(h * phase) * formant / h
    gate = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 0.5
    x = x * gate
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def _noise_like(x: np.ndarray, snr_db: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(x))
    return noise * np.std(x) / np.std(noise) * 10 ** (-snr_db / 20)


@pytest.fixture(scope="module")
def speech():
    return _speech_like(3.0)


# -- SI-SDR ---------------------------------------------------------------------------------------


def test_si_sdr_of_a_copy_is_very_high(speech):
    assert si_sdr(speech, speech) > 80


def test_si_sdr_is_scale_invariant(speech):
    est = speech + _noise_like(speech, 10)
    base = si_sdr(speech, est)
    for scale in (0.01, 3.0, -2.0):
        assert si_sdr(speech, scale * est) == pytest.approx(base, abs=1e-9)
    assert si_sdr(5.0 * speech, est) == pytest.approx(base, abs=1e-6)  # float32 rounding


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 12.5, 30.0])
def test_si_sdr_equals_the_snr_of_orthogonal_noise(speech, snr_db):
    # Zero-mean noise with the signal's component projected out: then α = 1 exactly and
    # SI-SDR = 10 log10(‖s‖² / ‖n‖²), which the noise is scaled to.
    s = speech.astype(np.float64) - speech.mean()
    n = np.random.default_rng(2).standard_normal(len(s))
    n -= n.mean()
    n -= np.dot(n, s) / np.dot(s, s) * s
    n *= np.sqrt(np.dot(s, s) / np.dot(n, n) / 10 ** (snr_db / 10))
    assert si_sdr(s, s + n) == pytest.approx(snr_db, abs=0.1)
    assert si_sdr(s + 0.7, s + n - 0.2) == pytest.approx(snr_db, abs=0.1)  # offsets removed


def test_si_sdr_undefined_and_bad_shapes(speech):
    assert np.isnan(si_sdr(np.zeros(100), np.ones(100)))
    with pytest.raises(ValueError, match="trim both to equal length"):
        si_sdr(speech, speech[:-1])
    with pytest.raises(ValueError, match="1-D"):
        si_sdr(speech[None], speech[None])


# -- PESQ, STOI -----------------------------------------------------------------------------------


def test_pesq_of_a_copy_is_high_and_of_noise_low(speech):
    assert pesq_wb(speech, speech, SR) > 4.0
    assert pesq_wb(speech, speech + _noise_like(speech, 0), SR) < 2.5


def test_pesq_resamples_other_rates():
    x = _speech_like(2.0, 24000)
    assert pesq_wb(x, x, 24000) > 4.0


def test_pesq_of_silence_is_nan_with_a_warning():
    silence = np.zeros(SR, np.float32)
    with pytest.warns(RuntimeWarning, match="PESQ undefined"):
        assert np.isnan(pesq_wb(silence, silence, SR))


def test_stoi_of_a_copy_is_one_and_of_noise_lower(speech):
    assert stoi(speech, speech, SR) == pytest.approx(1.0, abs=1e-6)
    assert stoi(speech, speech + _noise_like(speech, -5), SR) < 0.9


def test_stoi_of_too_little_speech_is_nan_with_a_warning():
    x = _speech_like(0.2)
    with pytest.warns(RuntimeWarning, match="STOI undefined"):
        assert np.isnan(stoi(x, x, SR))


# -- mel distance, MCD ----------------------------------------------------------------------------


@pytest.mark.parametrize("n_fft, hop, num_mels", [(1024, 256, 100), (512, 80, 80)])
def test_log_mel_matches_the_training_mel_spectrogram(speech, n_fft, hop, num_mels):
    # The metric's numpy mel spectrum is the losses' (JAX, float32) one.
    ours = log_mel(speech[:8000], SR, n_fft, hop, num_mels)
    theirs = mel_spectrogram(speech[None, :8000], SR, n_fft, hop, num_mels)[0]
    np.testing.assert_allclose(ours, np.log(np.maximum(np.asarray(theirs), 1e-5)), atol=1e-3)  # f32


def test_mel_distance_zero_for_a_copy_and_grows_with_noise(speech):
    assert mel_distance(speech, speech, SR) == 0.0
    mild = mel_distance(speech, speech + _noise_like(speech, 20), SR)
    heavy = mel_distance(speech, speech + _noise_like(speech, 0), SR)
    assert 0 < mild < heavy


def test_mcd_zero_for_a_copy_and_positive_otherwise(speech):
    assert mcd(speech, speech, SR) == 0.0
    mild = mcd(speech, speech + _noise_like(speech, 20), SR)
    heavy = mcd(speech, speech + _noise_like(speech, 0), SR)
    assert 0 < mild < heavy


def test_mcd_aligns_a_delayed_copy(speech):
    # A delay of whole 5 ms frames only shifts the cepstra: DTW should pair them back up, leaving
    # far less distortion than mild noise does.
    delayed = np.concatenate([np.zeros(3 * 80, np.float32), speech])
    assert mcd(speech, delayed, SR) < 0.3 * mcd(speech, speech + _noise_like(speech, 20), SR)


def test_dtw_path_pairs_repeated_frames():
    a = np.array([[0.0], [1.0], [2.0], [3.0]])
    b = np.array([[0.0], [1.0], [1.0], [2.0], [3.0]])
    ia, ib = dtw_path(a, b)
    assert ia.tolist() == [0, 1, 1, 2, 3] and ib.tolist() == [0, 1, 2, 3, 4]
    ia, ib = dtw_path(a, a)
    assert ia.tolist() == ib.tolist() == [0, 1, 2, 3]


# -- codebook usage -------------------------------------------------------------------------------


def test_uniform_codes_use_every_code_at_full_entropy():
    size, levels = 16, 3
    codes = np.tile(np.arange(size), (2, levels, 4))  # [N=2, Q=3, T=64], each code equally often
    usage = codebook_usage(codes, size)
    np.testing.assert_allclose(usage.used, 1.0)
    np.testing.assert_allclose(usage.entropy, np.log2(size))
    np.testing.assert_allclose(usage.perplexity, size)
    assert usage.efficiency == pytest.approx(1.0) and usage.num_frames == 2 * 64


def test_a_single_code_has_zero_entropy():
    usage = codebook_usage(np.full((2, 4, 10), 7), 32)
    np.testing.assert_allclose(usage.used, 1 / 32)
    np.testing.assert_allclose(usage.entropy, 0.0)
    np.testing.assert_allclose(usage.perplexity, 1.0)
    assert usage.efficiency == 0.0


def test_usage_per_level_and_lengths_exclude_padding():
    # Level 0 uniform over 4 of 8 codes, level 1 constant; frames past each length hold code 7.
    codes = np.full((2, 2, 6), 7)
    codes[0, 0, :4], codes[1, 0, :4] = [0, 1, 2, 3], [3, 2, 1, 0]
    codes[:, 1, :4] = 5
    usage = codebook_usage(codes, 8, lengths=[4, 4])
    np.testing.assert_allclose(usage.used, [0.5, 0.125])
    np.testing.assert_allclose(usage.entropy, [2.0, 0.0])
    assert usage.efficiency == pytest.approx(2.0 / (2 * 3))
    as_list = codebook_usage([codes[0, :, :4], codes[1, :, :4]], 8)  # ragged list form
    np.testing.assert_allclose(as_list.entropy, usage.entropy)


def test_counts_from_batches_add_up():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 10, (3, 2, 7)), rng.integers(0, 10, (5, 2, 4))
    total = code_counts(a, 10) + code_counts(b, 10)
    joined = codebook_usage([*a, *b], 10)
    np.testing.assert_allclose(usage_from_counts(total).entropy, joined.entropy)
    assert usage_from_counts(total).to_dict()["num_frames"] == 3 * 7 + 5 * 4


def test_out_of_range_codes_fail():
    with pytest.raises(ValueError, match=r"codes\[0\]: values in \[0, 8\], expected 0..7"):
        codebook_usage(np.array([[[0, 8]]]), 8)
    with pytest.raises(ValueError, match="expected int"):
        codebook_usage(np.zeros((2, 3)), 8)
