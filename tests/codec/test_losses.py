"""Codec losses against small hand computations, DAC's mel loss against a numpy rewrite, and the
EnCodec balancer's invariances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nclm.audio.mel import mel_filterbank, mel_spectrogram
from nclm.codec import losses as L

SR = 16000


def _noise(*shape, seed=0, scale=0.1) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


# -- reconstruction ------------------------------------------------------------------------------


def test_waveform_l1():
    x = np.array([[0.0, 1.0, -2.0], [3.0, 0.5, 0.0]], np.float32)
    y = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    assert float(L.waveform_l1(x, y)) == pytest.approx((1 + 0 + 2 + 3 + 0.5 + 0) / 6)


def _numpy_log_mel(x: np.ndarray, n_fft: int, n_mels: int) -> np.ndarray:
    """DAC's mel of one signal written out: reflect-pad n_fft/2, periodic Hann frames every n_fft/4,
    |rfft| @ Slaney filters, clamp at 1e-5, log10."""
    hop = n_fft // 4
    padded = np.pad(x, n_fft // 2, mode="reflect")
    starts = range(0, len(padded) - n_fft + 1, hop)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([padded[s : s + n_fft] * window for s in starts])
    mel = np.abs(np.fft.rfft(frames, axis=-1)) @ mel_filterbank(SR, n_fft, n_mels)
    return np.log10(np.maximum(mel, 1e-5))


def test_mel_loss_one_scale_matches_numpy():
    x, y = _noise(2, 4000, seed=1), _noise(2, 4000, seed=2)
    got = float(L.multi_scale_mel_loss(x, y, SR, windows=(256,), n_mels=(40,)))
    ref = np.mean(
        [
            np.abs(_numpy_log_mel(a, 256, 40) - _numpy_log_mel(b, 256, 40)).mean()
            for a, b in zip(x, y)
        ]
    )
    assert got == pytest.approx(ref, rel=1e-4)


def test_mel_loss_zero_when_equal_positive_otherwise_and_summed_over_scales():
    x = _noise(2, 8000, seed=3)
    y = x + _noise(2, 8000, seed=4, scale=0.01)
    dac = jax.jit(lambda a, b: L.multi_scale_mel_loss(a, b, SR))  # DAC's 7 scales, 32 ... 2048
    assert float(dac(x, x)) == 0.0
    assert float(dac(x, y)) > 0
    two = float(L.multi_scale_mel_loss(x, y, SR, windows=(64, 256), n_mels=(10, 40)))
    parts = [
        float(L.multi_scale_mel_loss(x, y, SR, windows=(w,), n_mels=(m,)))
        for w, m in ((64, 10), (256, 40))
    ]
    assert two == pytest.approx(sum(parts), rel=1e-5)


def test_mel_loss_magnitude_term():
    """mag_weight adds mean |M(x) - M(x̂)| (no log); log_weight=0 leaves only that term."""
    x, y = _noise(1, 2048, seed=5), _noise(1, 2048, seed=6)
    mag = float(L.multi_scale_mel_loss(x, y, SR, (128,), (20,), mag_weight=1.0, log_weight=0.0))
    m = np.asarray(mel_spectrogram(jnp.asarray(np.concatenate([x, y])), SR, 128, 32, 20))
    assert mag == pytest.approx(np.abs(m[0] - m[1]).mean(), rel=1e-5)
    with pytest.raises(ValueError, match="2 windows but 1 n_mels"):
        L.multi_scale_mel_loss(x, y, SR, windows=(64, 128), n_mels=(10,))


# -- adversarial ---------------------------------------------------------------------------------

# two sub-discriminators with logit maps of different shapes
REAL = [
    np.array([[0.5, 2.0], [-1.0, 1.0]], np.float32),
    np.array([[[0.0], [3.0], [0.8]]], np.float32),
]
FAKE = [
    np.array([[-0.5, 0.2], [1.5, -2.0]], np.float32),
    np.array([[[1.0], [-0.4], [0.0]]], np.float32),
]


def test_hinge_losses_by_hand():
    # generator: mean max(0, 1 - D(x̂)) per disc: [(1.5 + .8 + 0 + 3) / 4, (0 + 1.4 + 1) / 3]
    gen = np.mean([5.3 / 4, 2.4 / 3])
    assert float(L.adversarial_generator_loss(FAKE, "hinge")) == pytest.approx(gen)
    # discriminator: real max(0, 1 - D(x)): [(.5 + 0 + 2 + 0) / 4, (1 + 0 + .2) / 3]
    #                fake max(0, 1 + D(x̂)): [(.5 + 1.2 + 2.5 + 0) / 4, (2 + .6 + 1) / 3]
    disc = np.mean([2.5 / 4 + 4.2 / 4, 1.2 / 3 + 3.6 / 3])
    assert float(L.adversarial_discriminator_loss(REAL, FAKE, "hinge")) == pytest.approx(disc)


def test_lsgan_losses_by_hand():
    # generator: mean (1 - D(x̂))^2: [(2.25 + .64 + 0.25 + 9) / 4, (0 + 1.96 + 1) / 3]
    gen = np.mean([12.14 / 4, 2.96 / 3])
    assert float(L.adversarial_generator_loss(FAKE, "lsgan")) == pytest.approx(gen)
    # real (1 - D(x))^2: [(.25 + 1 + 4 + 0) / 4, (1 + 4 + .04) / 3]
    # fake D(x̂)^2:      [(.25 + .04 + 2.25 + 4) / 4, (1 + .16 + 0) / 3]
    disc = np.mean([5.25 / 4 + 6.54 / 4, 5.04 / 3 + 1.16 / 3])
    assert float(L.adversarial_discriminator_loss(REAL, FAKE, "lsgan")) == pytest.approx(disc)


def test_adversarial_rejects_unknown_kind():
    with pytest.raises(ValueError, match="'wgan'"):
        L.adversarial_generator_loss(FAKE, "wgan")
    with pytest.raises(ValueError, match="2 real but 1 fake"):
        L.adversarial_discriminator_loss(REAL, FAKE[:1])


# -- feature matching ----------------------------------------------------------------------------

FEATS_REAL = [
    [np.array([1.0, -2.0], np.float32), np.array([[4.0]], np.float32)],
    [np.array([0.5, 0.5, -1.0, 0.0], np.float32)],
]
FEATS_FAKE = [
    [np.array([0.0, -1.0], np.float32), np.array([[1.0]], np.float32)],
    [np.array([0.5, 1.5, 0.0, 1.0], np.float32)],
]


def test_feature_matching_by_hand():
    # disc 0: layers |r - f| means 1.0 and 3.0; disc 1: 0.75. Mean over layers, then discs.
    assert float(L.feature_matching_loss(FEATS_REAL, FEATS_FAKE)) == pytest.approx((2.0 + 0.75) / 2)
    # relative: divide by mean |r|: 1.0 / 1.5, 3.0 / 4.0; 0.75 / 0.5
    rel = ((1.0 / 1.5 + 3.0 / 4.0) / 2 + 0.75 / 0.5) / 2
    got = float(L.feature_matching_loss(FEATS_REAL, FEATS_FAKE, relative=True))
    assert got == pytest.approx(rel, rel=1e-6)
    # without the last map: disc 0 keeps layer 0 only; disc 1 would be empty -> refused
    one = [FEATS_REAL[0]], [FEATS_FAKE[0]]
    assert float(L.feature_matching_loss(*one, include_last=False)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="discriminator 1 has 0 real"):
        L.feature_matching_loss(FEATS_REAL, FEATS_FAKE, include_last=False)


def test_feature_matching_stops_gradient_on_the_real_side():
    def loss(real, fake):
        return L.feature_matching_loss([[real]], [[fake]], relative=True)

    r, f = jnp.array([1.0, -2.0]), jnp.array([0.0, -1.0])
    g_real, g_fake = jax.grad(loss, argnums=(0, 1))(r, f)
    assert np.all(np.asarray(g_real) == 0)
    # d/df mean|r - f| / mean|r| = -sign(r - f) / (2 * 1.5)
    np.testing.assert_allclose(g_fake, [-1 / 3, 1 / 3], rtol=1e-6)


# -- balancer ------------------------------------------------------------------------------------


def _losses(scale_a=1.0):
    target_a, target_b = jnp.asarray(_noise(3, 64, seed=7)), jnp.asarray(_noise(3, 64, seed=8))
    return {
        "a": lambda y: scale_a * 1000.0 * jnp.mean((y - target_a) ** 2),  # large
        "b": lambda y: 1e-3 * jnp.mean(jnp.abs(y - target_b)),  # tiny
    }


def _item_norm(g) -> float:
    """Per-item L2 norms averaged over the batch (the balancer's norm)."""
    return float(np.mean(np.linalg.norm(np.asarray(g).reshape(len(g), -1), axis=1)))


def test_balancer_contributions_follow_the_weights():
    x_hat = jnp.asarray(_noise(3, 64, seed=9))
    fns, weights = _losses(), {"a": 3.0, "b": 1.0}
    grads = {k: jax.grad(fn)(x_hat) for k, fn in fns.items()}
    assert _item_norm(grads["a"]) > 1e4 * _item_norm(grads["b"])  # very different raw scales
    ema = {"a": jnp.zeros(()), "b": jnp.zeros(())}
    combined, new_ema, metrics = L.balance(grads, weights, ema, beta=0.0)
    # each loss alone (the other's gradient zeroed) is its contribution to the combined gradient
    parts = {
        k: L.balance({**{j: 0 * g for j, g in grads.items()}, k: grads[k]}, weights, ema, beta=0.0)[
            0
        ]
        for k in grads
    }
    np.testing.assert_allclose(combined, parts["a"] + parts["b"], rtol=1e-6, atol=1e-9)
    assert _item_norm(parts["a"]) == pytest.approx(0.75, rel=1e-5)  # R * 3 / (3 + 1)
    assert _item_norm(parts["b"]) == pytest.approx(0.25, rel=1e-5)
    for k in grads:
        assert float(new_ema[k]) == pytest.approx(_item_norm(grads[k]), rel=1e-6)
        assert float(metrics[f"grad_norm_{k}"]) == pytest.approx(_item_norm(grads[k]), rel=1e-6)
    assert float(metrics["ratio_a"] + metrics["ratio_b"]) == pytest.approx(1.0)


def test_balancer_is_invariant_to_loss_scale_and_jits():
    x_hat = jnp.asarray(_noise(3, 64, seed=9))
    weights, ema = {"a": 3.0, "b": 1.0}, {"a": jnp.zeros(()), "b": jnp.zeros(())}

    @jax.jit
    def backward(y, ema):
        return L.balanced_backward(_losses(), y, weights, ema, beta=0.0)

    @jax.jit
    def backward_scaled(y, ema):
        return L.balanced_backward(_losses(scale_a=1000.0), y, weights, ema, beta=0.0)

    cot, new_ema, _ = backward(x_hat, ema)
    cot_scaled, new_ema_scaled, _ = backward_scaled(x_hat, ema)
    np.testing.assert_allclose(cot, cot_scaled, rtol=1e-5, atol=1e-10)
    assert float(new_ema_scaled["a"]) == pytest.approx(1000 * float(new_ema["a"]), rel=1e-5)
    # balanced_backward == balance of the plain gradients
    grads = {k: jax.grad(fn)(x_hat) for k, fn in _losses().items()}
    np.testing.assert_allclose(
        cot, L.balance(grads, weights, ema, beta=0.0)[0], rtol=1e-5, atol=1e-8
    )


def test_balancer_ema_update():
    """Zero state means 'no history': the first norm seeds it, later steps are a plain EMA; a loss
    whose gradient is zero keeps a zero EMA and contributes nothing."""
    g1, g2 = jnp.ones((2, 4)), 3 * jnp.ones((2, 4))  # per-item norms 2 and 6
    weights = {"a": 1.0, "b": 1.0}
    ema = {"a": jnp.zeros(()), "b": jnp.zeros(()), "other": jnp.asarray(5.0)}
    _, ema, _ = L.balance({"a": g1, "b": jnp.zeros((2, 4))}, weights, ema, beta=0.9)
    assert float(ema["a"]) == pytest.approx(2.0) and float(ema["b"]) == 0.0
    assert float(ema["other"]) == 5.0  # entries without a gradient pass through unchanged
    combined, ema, _ = L.balance({"a": g2, "b": jnp.zeros((2, 4))}, weights, ema, beta=0.9)
    assert float(ema["a"]) == pytest.approx(0.9 * 2.0 + 0.1 * 6.0)
    np.testing.assert_allclose(combined, 0.5 * g2 / (0.9 * 2.0 + 0.1 * 6.0), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\['c'\]"):
        L.balance({"c": g1}, weights, ema)
