"""STFT / inverse STFT: perfect reconstruction with "same" padding, a known sinusoid, torch.stft."""

import jax.numpy as jnp
import numpy as np
import pytest

from nclm.audio.stft import hann_window, istft_same, overlap_add, stft


def _noise(batch: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, length)).astype(np.float32)


@pytest.mark.parametrize("hop,ratio", [(8, 4), (8, 2), (16, 4), (6, 2)])
def test_istft_same_reconstructs(hop, ratio):
    n_fft = ratio * hop
    num_frames = 13
    x = _noise(2, num_frames * hop, seed=hop * ratio)
    spec = stft(jnp.asarray(x), n_fft, hop, padding="same")
    assert spec.shape == (2, num_frames, n_fft // 2 + 1)
    y = np.asarray(istft_same(spec, n_fft, hop))
    assert y.shape == x.shape  # S = T * hop
    np.testing.assert_allclose(y, x, atol=1e-4, rtol=0)


def test_sinusoid_spectrum_and_inverse():
    """A sine on FFT bin k with amplitude A: through a periodic Hann window of length N its spectrum
    has |X_k| = A N / 4 and |X_{k +- 1}| = A N / 8 and nothing elsewhere (in frames where the sine
    fills the window); the inverse gives the sine back."""
    n_fft, hop, num_frames, k, amp = 64, 16, 20, 5, 0.7
    n = np.arange(num_frames * hop)
    x = (amp * np.sin(2 * np.pi * k * n / n_fft + 0.3)).astype(np.float32)[None]
    spec = np.asarray(stft(jnp.asarray(x), n_fft, hop, padding="same"))
    inner = spec[0, 3:-3]  # frames away from the zero padding
    expected = np.zeros(n_fft // 2 + 1)
    expected[[k - 1, k, k + 1]] = [amp * n_fft / 8, amp * n_fft / 4, amp * n_fft / 8]
    np.testing.assert_allclose(np.abs(inner), np.broadcast_to(expected, inner.shape), atol=1e-4)
    assert np.argmax(np.abs(spec[0]), axis=-1).tolist() == [k] * num_frames

    y = np.asarray(istft_same(jnp.asarray(spec), n_fft, hop))
    assert y.shape == (1, num_frames * hop)
    np.testing.assert_allclose(y, x, atol=1e-5, rtol=0)


def test_istft_same_of_constructed_spectrum():
    """A spectrum built by hand (not by `stft`): bin k with phase advancing by 2 pi k hop / N per
    frame is a stationary sinusoid, so the inverse is that sinusoid everywhere, edges included."""
    n_fft, hop, num_frames, k, amp, phi = 32, 8, 12, 3, 1.3, 0.4
    frames = np.arange(num_frames)
    # Frame t covers samples t*hop - pad ... ; its windowed rfft of amp*cos(w n + phi) is
    # (amp N / 4) e^{i(w (t hop - pad) + phi)} at bin k plus the Hann side lobes at k +- 1.
    pad = (n_fft - hop) // 2
    phase = 2 * np.pi * k * (frames * hop - pad) / n_fft + phi
    spec = np.zeros((1, num_frames, n_fft // 2 + 1), np.complex64)
    spec[0, :, k] = amp * n_fft / 4 * np.exp(1j * phase)
    spec[0, :, k - 1] = -amp * n_fft / 8 * np.exp(1j * phase)
    spec[0, :, k + 1] = -amp * n_fft / 8 * np.exp(1j * phase)
    y = np.asarray(istft_same(jnp.asarray(spec), n_fft, hop))
    n = np.arange(num_frames * hop)
    np.testing.assert_allclose(y[0], amp * np.cos(2 * np.pi * k * n / n_fft + phi), atol=1e-5)


@pytest.mark.needs("torch")
def test_stft_center_matches_torch():
    import torch

    for n_fft, hop in ((64, 16), (32, 8), (48, 12)):
        x = _noise(2, 300, seed=n_fft)
        ours = np.asarray(stft(jnp.asarray(x), n_fft, hop, padding="center"))
        ref = torch.stft(
            torch.from_numpy(x),
            n_fft,
            hop,
            window=torch.hann_window(n_fft),
            center=True,
            return_complex=True,
        ).numpy()
        ref = np.swapaxes(ref, 1, 2)  # [B, F, T] -> [B, T, F]
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.needs("torch")
def test_hann_window_is_periodic():
    import torch

    np.testing.assert_allclose(hann_window(20), torch.hann_window(20).numpy(), atol=1e-6)


@pytest.mark.parametrize("width,hop", [(10, 4), (16, 4), (3, 4), (4, 4), (9, 3)])
def test_overlap_add_matches_loop(width, hop):
    frames = np.random.default_rng(width).standard_normal((2, 7, width)).astype(np.float32)
    ref = np.zeros((2, (7 - 1) * hop + width), np.float32)
    for t in range(7):
        ref[:, t * hop : t * hop + width] += frames[:, t]
    out = np.asarray(overlap_add(jnp.asarray(frames), hop))
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-6, rtol=0)
