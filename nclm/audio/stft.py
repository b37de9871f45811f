"""STFT and inverse STFT in JAX (channels-last frames: spec[B, T, F])."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def hann_window(length: int) -> np.ndarray:
    """Periodic Hann window (torch.hann_window's default)."""
    n = np.arange(length)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / length)).astype(np.float32)


def frame(x: jax.Array, frame_length: int, hop: int) -> jax.Array:
    """x[B, S] -> frames[B, T, frame_length] with T = (S - frame_length) // hop + 1."""
    num_frames = (x.shape[-1] - frame_length) // hop + 1
    if frame_length % hop == 0:
        # Frames as k = frame_length / hop shifted views of hop-sized blocks: slices and a concat,
        # whose gradient is pads and adds. A gather with a [T, W] index constant (the general
        # path) is slower to run and makes XLA compile the training step several times slower.
        k = frame_length // hop
        used = (num_frames + k - 1) * hop
        blocks = x[..., :used].reshape(*x.shape[:-1], num_frames + k - 1, hop)
        return jnp.concatenate([blocks[..., j : j + num_frames, :] for j in range(k)], axis=-1)
    idx = hop * np.arange(num_frames)[:, None] + np.arange(frame_length)[None, :]
    return x[..., idx]


def overlap_add(frames: jax.Array, hop: int) -> jax.Array:
    """frames[B, T, W] -> y[B, (T - 1) * hop + W], summing overlaps. Done as W/hop shifted adds of
    hop-sized blocks, so it is a few dense ops rather than a scatter."""
    batch, num_frames, width = frames.shape
    blocks = -(-width // hop)
    frames = jnp.pad(frames, ((0, 0), (0, 0), (0, blocks * hop - width)))
    parts = frames.reshape(batch, num_frames, blocks, hop)
    out = sum(jnp.pad(parts[:, :, j], ((0, 0), (j, blocks - 1 - j), (0, 0))) for j in range(blocks))
    return out.reshape(batch, (num_frames + blocks - 1) * hop)[:, : (num_frames - 1) * hop + width]


def stft(x: jax.Array, n_fft: int, hop: int, padding: str = "same") -> jax.Array:
    """Complex STFT with a Hann window of n_fft. `same` pads (n_fft - hop) / 2 on each side (the
    Vocos convention, S = T * hop <-> T frames); `center` pads n_fft / 2 reflected (torch's
    center=True); `none` pads nothing."""
    if padding == "same":
        pad = (n_fft - hop) // 2
        x = jnp.pad(x, ((0, 0), (pad, pad)))
    elif padding == "center":
        x = jnp.pad(x, ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    elif padding != "none":
        raise ValueError(f"stft padding must be 'same', 'center' or 'none', got {padding!r}")
    frames = frame(x, n_fft, hop) * hann_window(n_fft)
    return jnp.fft.rfft(frames, n=n_fft, axis=-1)


def istft_same(
    spec: jax.Array, n_fft: int, hop: int, lengths: jax.Array | None = None
) -> jax.Array:
    """Inverse of `stft(..., padding="same")`: spec[B, T, n_fft/2 + 1] -> y[B, T * hop].

    Each frame is inverse-FFT'd and windowed, overlap-added, divided by the overlap-added squared
    window, and (n_fft - hop) / 2 samples are trimmed from each side. Unlike torch.istft, this works
    for "same" padding, where the window envelope at the edges is not constant. With `lengths`
    (int[B] valid frames), each row ends as a lone clip of that many frames would: later frames add
    nothing, to the signal or to the envelope."""
    window = hann_window(n_fft)
    frames = jnp.fft.irfft(spec, n=n_fft, axis=-1) * window
    num_frames = spec.shape[1]
    weight = jnp.ones((1, num_frames, 1))
    if lengths is not None:
        weight = (jnp.arange(num_frames) < jnp.asarray(lengths)[:, None])[..., None].astype(float)
        frames = frames * weight
    y = overlap_add(frames, hop)
    envelope = overlap_add(weight * window**2, hop)
    pad = (n_fft - hop) // 2
    y, envelope = y[:, pad : y.shape[-1] - pad], envelope[:, pad : envelope.shape[-1] - pad]
    return jnp.where(envelope > 1e-11, y / jnp.maximum(envelope, 1e-11), 0.0)
