"""Codec training losses, pure float32 functions, and EnCodec's gradient balancer.

x[B, S] is the reference audio, x̂[B, S] the reconstruction. D_k is sub-discriminator k (of K),
returning a logit map of any shape and feature maps D_k^l (l = 1..L_k). mean(.) is the mean over
all elements of one map. Losses over several discriminators are **averaged** over them
(EnCodec's mean_k); HiFi-GAN and DAC sum over discriminators (and, for feature matching, over
layers), so their weight w becomes w * K here (w * K * L for feature matching when every
discriminator has L maps).

Typical weights (shared/REFERENCE.md):
    EnCodec  l1 0.1, adv (hinge) 3, feat (relative) 3, or the balancer; its frequency loss is
             L1 + L2 on linear 64-bin mels (not this file's log-mel loss)
    DAC      mel 15 (`multi_scale_mel_loss` defaults), feat 2, adv (lsgan) 1, each summed over k
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from nclm.audio.mel import mel_spectrogram

DAC_MEL_WINDOWS = (32, 64, 128, 256, 512, 1024, 2048)
DAC_MEL_BINS = (5, 10, 20, 40, 80, 160, 320)
GAN_KINDS = ("hinge", "lsgan")


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _check_pair(x: jax.Array, x_hat: jax.Array, where: str) -> None:
    if x.shape != x_hat.shape or x.ndim != 2:
        raise ValueError(
            f"{where}: expected x and x_hat of one shape [B, S], got {x.shape} and {x_hat.shape}"
        )


# -- reconstruction ------------------------------------------------------------------------------


def waveform_l1(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """L = mean |x - x̂| over batch and samples."""
    return jnp.mean(jnp.abs(_f32(x) - _f32(x_hat)))


def multi_scale_mel_loss(
    x: jax.Array,
    x_hat: jax.Array,
    sample_rate: int,
    windows: Sequence[int] = DAC_MEL_WINDOWS,
    n_mels: Sequence[int] = DAC_MEL_BINS,
    clamp: float = 1e-5,
    power: float = 1.0,
    mag_weight: float = 0.0,
    log_weight: float = 1.0,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> jax.Array:
    """DAC's multi-scale mel loss, **summed** over scales i (as DAC does):

        L = sum_i  log_weight * mean | log10(max(M_i(x), c)^p) - log10(max(M_i(x̂), c)^p) |
                 + mag_weight * mean | M_i(x) - M_i(x̂) |

    M_i is the magnitude mel spectrogram [B, T_i, n_mels_i] with a Hann window of windows[i],
    hop windows[i] / 4, centered (reflect) frames, Slaney filters from fmin to fmax (Nyquist);
    c = clamp, p = power. DAC's defaults: the 7 scales here, c = 1e-5, p = 1, mag_weight 0.
    """
    if len(windows) != len(n_mels):
        raise ValueError(f"multi_scale_mel_loss: {len(windows)} windows but {len(n_mels)} n_mels")
    _check_pair(x, x_hat, "multi_scale_mel_loss")
    batch = x.shape[0]
    both = jnp.concatenate([_f32(x), _f32(x_hat)])  # [2B, S]: one STFT per scale
    loss = jnp.zeros((), jnp.float32)
    for window, mels in zip(windows, n_mels):
        m = mel_spectrogram(both, sample_rate, window, window // 4, mels, fmin=fmin, fmax=fmax)
        m_x, m_hat = m[:batch], m[batch:]  # [B, T, M]
        if log_weight:
            log_x = power * jnp.log10(jnp.maximum(m_x, clamp))
            log_hat = power * jnp.log10(jnp.maximum(m_hat, clamp))
            loss = loss + log_weight * jnp.mean(jnp.abs(log_x - log_hat))
        if mag_weight:
            loss = loss + mag_weight * jnp.mean(jnp.abs(m_x - m_hat))
    return loss


# -- adversarial ---------------------------------------------------------------------------------


def _mean_over_discriminators(logits: Sequence[jax.Array], fn: Callable, where: str) -> jax.Array:
    if not logits:
        raise ValueError(f"{where}: got no discriminator logits")
    return sum(jnp.mean(fn(_f32(lg))) for lg in logits) / len(logits)


def _check_kind(kind: str, where: str) -> None:
    if kind not in GAN_KINDS:
        raise ValueError(f"{where}: kind must be one of {GAN_KINDS}, got {kind!r}")


def adversarial_generator_loss(fake_logits: Sequence[jax.Array], kind: str = "hinge") -> jax.Array:
    """Generator side, averaged over the K sub-discriminators:

    hinge:  L = 1/K sum_k mean max(0, 1 - D_k(x̂))
    lsgan:  L = 1/K sum_k mean (1 - D_k(x̂))^2
    """
    _check_kind(kind, "adversarial_generator_loss")
    if kind == "hinge":
        return _mean_over_discriminators(fake_logits, lambda d: jax.nn.relu(1 - d), "adversarial")
    return _mean_over_discriminators(fake_logits, lambda d: jnp.square(1 - d), "adversarial")


def adversarial_discriminator_loss(
    real_logits: Sequence[jax.Array], fake_logits: Sequence[jax.Array], kind: str = "hinge"
) -> jax.Array:
    """Discriminator side, averaged over the K sub-discriminators:

    hinge:  L = 1/K sum_k [mean max(0, 1 - D_k(x)) + mean max(0, 1 + D_k(x̂))]
    lsgan:  L = 1/K sum_k [mean (1 - D_k(x))^2 + mean D_k(x̂)^2]
    """
    _check_kind(kind, "adversarial_discriminator_loss")
    if len(real_logits) != len(fake_logits):
        raise ValueError(
            f"adversarial_discriminator_loss: {len(real_logits)} real but {len(fake_logits)} fake"
        )
    if kind == "hinge":
        real = _mean_over_discriminators(real_logits, lambda d: jax.nn.relu(1 - d), "adversarial")
        fake = _mean_over_discriminators(fake_logits, lambda d: jax.nn.relu(1 + d), "adversarial")
    else:
        real = _mean_over_discriminators(real_logits, lambda d: jnp.square(1 - d), "adversarial")
        fake = _mean_over_discriminators(fake_logits, jnp.square, "adversarial")
    return real + fake


def feature_matching_loss(
    real_feats: Sequence[Sequence[jax.Array]],
    fake_feats: Sequence[Sequence[jax.Array]],
    relative: bool = False,
    include_last: bool = True,
    eps: float = 1e-8,
) -> jax.Array:
    """L1 between discriminator feature maps, the real side stop-gradient, averaged over layers
    within each discriminator and then over discriminators:

        l_kl = mean |sg(D_k^l(x)) - D_k^l(x̂)|                       (HiFi-GAN, DAC)
        l_kl = mean |sg(D_k^l(x)) - D_k^l(x̂)| / (mean |sg(D_k^l(x))| + eps)   (relative: EnCodec)
        L    = 1/K sum_k 1/L_k sum_l l_kl

    Our discriminators list the logit map last; `include_last=False` drops it (DAC and EnCodec
    match only the hidden maps; HiFi-GAN also matches the last one).
    """
    if len(real_feats) != len(fake_feats) or not real_feats:
        raise ValueError(
            f"feature_matching_loss: {len(real_feats)} real vs {len(fake_feats)} fake discs"
        )
    per_disc = []
    for k, (real, fake) in enumerate(zip(real_feats, fake_feats)):
        real, fake = list(real), list(fake)
        if not include_last:
            real, fake = real[:-1], fake[:-1]
        if len(real) != len(fake) or not real:
            raise ValueError(
                f"feature_matching_loss: discriminator {k} has {len(real)} real vs {len(fake)} "
                "fake feature maps"
            )
        layers = []
        for r, f in zip(real, fake):
            r = jax.lax.stop_gradient(_f32(r))
            l1 = jnp.mean(jnp.abs(r - _f32(f)))
            layers.append(l1 / (jnp.mean(jnp.abs(r)) + eps) if relative else l1)
        per_disc.append(sum(layers) / len(layers))
    return sum(per_disc) / len(per_disc)


# -- EnCodec's gradient balancer -----------------------------------------------------------------


def balance(
    grads: Mapping[str, jax.Array],
    weights: Mapping[str, float],
    ema: Mapping[str, jax.Array],
    beta: float = 0.999,
    total_norm: float = 1.0,
    eps: float = 1e-12,
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
    """Rescales each loss's gradient g_i = dL_i/dx̂ [B, ...] so that loss i contributes a fixed
    fraction of a reference norm R, whatever its raw scale, and sums them:

        n_i   = 1/B sum_b ||g_i[b]||_2                   (per-item norms, averaged over the batch)
        a_i  <- beta a_i + (1 - beta) n_i,  a_i <- n_i while a_i == 0  (the EMA state `ema`)
        g~    = sum_i R (w_i / sum_j w_j) g_i / (eps + a_i)

    Bias correction: the state is a scalar per loss, initialised to 0 and meaning "no history";
    the first non-zero norm seeds the EMA, so it is never biased toward 0 (Adam's correction
    at the first step) and follows the plain EMA afterwards. EnCodec's averager instead weighs
    all past norms by beta^age / sum beta^age; the two agree up to the weight of the first
    observation, which decays as beta^n. A loss whose gradient is 0 (e.g. adversarial terms
    before they are switched on) keeps its EMA at 0 and contributes 0.

    Returns (g~ [B, ...], the new EMA dict with the same keys as `ema`, metrics): metrics hold
    `grad_norm_<name>` (n_i) and `ratio_<name>` (n_i / sum_j n_j, how much of the raw gradient
    each loss was before balancing).
    """
    missing = sorted((set(grads) - set(weights)) | (set(grads) - set(ema)))
    if missing:
        raise ValueError(f"balance: losses {missing} need both a weight and an EMA entry")
    if not grads:
        raise ValueError("balance: got no gradients")
    total_weight = sum(weights[k] for k in grads)
    if isinstance(total_weight, (int, float)) and total_weight <= 0:
        raise ValueError(f"balance: loss weights must sum to > 0, got {total_weight}")
    norms = {}
    for name, g in grads.items():
        g = _f32(g)
        per_item = jnp.sqrt(jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim))))  # [B]
        norms[name] = jnp.mean(per_item)
    new_ema = dict(ema)
    combined = None
    for name, g in grads.items():
        prev = _f32(ema[name])
        avg = jnp.where(prev > 0, beta * prev + (1 - beta) * norms[name], norms[name])
        new_ema[name] = avg
        scale = total_norm * (weights[name] / total_weight) / (eps + avg)
        term = scale * _f32(g)
        combined = term if combined is None else combined + term
    norm_sum = sum(norms.values())
    metrics = {f"grad_norm_{k}": n for k, n in norms.items()}
    metrics |= {f"ratio_{k}": n / (norm_sum + eps) for k, n in norms.items()}
    return combined, new_ema, metrics


def balanced_backward(
    loss_fns: Mapping[str, Callable[[jax.Array], jax.Array]],
    x_hat: jax.Array,
    weights: Mapping[str, float],
    ema: Mapping[str, jax.Array],
    **settings: float,
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
    """The balanced cotangent for x̂: each loss's gradient from its own `jax.vjp` at x̂, then
    `balance` (`settings`: its beta, total_norm, eps). Pull the returned cotangent back through
    the generator with the generator's vjp; losses that do not depend on x̂ (commitment,
    codebook) are added outside. Returns (cotangent like x_hat, new EMA, metrics)."""
    grads = {}
    for name, fn in loss_fns.items():
        value, pullback = jax.vjp(fn, x_hat)
        (grads[name],) = pullback(jnp.ones_like(value))
    combined, new_ema, metrics = balance(grads, weights, ema, **settings)
    return combined.astype(x_hat.dtype), new_ema, metrics
