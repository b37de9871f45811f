"""Discriminators: output and feature-map shapes from the conv arithmetic (traced with eval_shape,
nothing materialised), the period padding, gradient flow through every sub-discriminator, and
the full-size presets' parameter counts.

Shapes below are for 1 s of 16 kHz audio (S = 16000) at width channels = 8.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nclm.codec import losses as L
from nclm.codec.discriminators import (
    DiscriminatorConfig,
    Discriminators,
    MultiBandSTFTDiscriminator,
    PeriodDiscriminator,
    ScaleDiscriminator,
    STFTDiscriminator,
    dac_discriminators,
    encodec_discriminators,
    hifigan_discriminators,
    pad_to_period,
    tiny_discriminators,
)

S = 16000
C = 8
WAV = jax.ShapeDtypeStruct((2, S), jnp.float32)


def _output_shapes(module, wav=WAV):
    """(logits shape, [feature shapes]) without running anything."""
    (logits, feats), _ = jax.eval_shape(module.init_with_output, jax.random.key(0), wav)
    return logits.shape, [f.shape for f in feats]


def _num_params(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(tree)))


# -- shapes --------------------------------------------------------------------------------------


# rows R = ceil(S / p) after padding; four (5, 1) convs with stride 3 and padding 2 give
# ceil(R / 3) each, so R' = ceil(R / 81); the last conv and the post conv keep R'.
MPD_ROWS = {2: (8000, 99), 3: (5334, 66), 5: (3200, 40), 7: (2286, 29), 11: (1455, 18)}


@pytest.mark.parametrize("period", sorted(MPD_ROWS))
def test_period_discriminator_shapes(period):
    rows, out_rows = MPD_ROWS[period]
    assert rows == math.ceil(S / period) and out_rows == math.ceil(rows / 81)
    logits, feats = _output_shapes(PeriodDiscriminator(period, C))
    assert logits == (2, out_rows, period, 1)
    assert len(feats) == 5 + 1  # five activated maps, then the logits
    widths = [C, 4 * C, 16 * C, 32 * C, 32 * C, 1]
    row_counts = [math.ceil(rows / 3**i) for i in (1, 2, 3, 4, 4)] + [out_rows]
    assert feats == [(2, r, period, w) for r, w in zip(row_counts, widths)]


def test_pad_to_period_reflects_on_the_right():
    x = jnp.arange(16000, dtype=jnp.float32)[None]
    padded = np.asarray(pad_to_period(x, 7))  # 16000 = 7 * 2285 + 5 -> 2 samples of padding
    assert padded.shape == (1, 16002)
    np.testing.assert_array_equal(padded[0, :16000], np.arange(16000))
    np.testing.assert_array_equal(padded[0, 16000:], [15998, 15997])  # reflection about the end
    assert pad_to_period(x, 5) is x  # already a multiple: untouched


# strides 1, 2, 2, 4, 4, 1, 1 with "same" padding: frames ceil(S / 64) after the stack; scale i
# sees S_i = S_{i-1} // 2 + 1 samples (avg-pool 4, stride 2, padding 2).
MSD_SAMPLES = {0: (16000, 250), 1: (8001, 126), 2: (4001, 63)}


@pytest.mark.parametrize("downsample", sorted(MSD_SAMPLES))
def test_scale_discriminator_shapes(downsample):
    samples, frames = MSD_SAMPLES[downsample]
    logits, feats = _output_shapes(ScaleDiscriminator(downsample, C))
    assert logits == (2, frames, 1) and frames == math.ceil(samples / 64)
    lengths = [samples, *(math.ceil(samples / s) for s in (2, 4, 16, 64, 64, 64)), frames]
    widths = [4 * C, 4 * C, 8 * C, 16 * C, 32 * C, 32 * C, 32 * C, 1]
    assert feats == [(2, t, w) for t, w in zip(lengths, widths)]


# frames T = (S - n_fft) // (n_fft / 4) + 1 (no centering); F = n_fft / 2 + 1 bins, halved three
# times by (3, 9) convs with stride 2 and padding 4 (F -> (F - 1) // 2 + 1), so F' = n_fft / 16 + 1.
STFT_SIZES = {2048: (28, 129), 1024: (59, 65), 512: (122, 33), 256: (247, 17), 128: (497, 9)}


@pytest.mark.parametrize("n_fft", sorted(STFT_SIZES))
def test_stft_discriminator_shapes(n_fft):
    frames, bins = STFT_SIZES[n_fft]
    assert frames == (S - n_fft) // (n_fft // 4) + 1 and bins == n_fft // 16 + 1
    logits, feats = _output_shapes(STFTDiscriminator(n_fft, C))
    assert logits == (2, frames, bins, 1)
    f0 = n_fft // 2 + 1
    freq = [f0, (f0 + 1) // 2, (f0 + 3) // 4, bins, bins, bins]
    assert feats == [(2, frames, f, C) for f in freq[:-1]] + [(2, frames, bins, 1)]


# frames T = ceil(S / hop), hop = w / 4; F = w / 2 + 1 bins cut at int(fraction * F) for
# fractions 0, .1, .25, .5, .75, 1; each band of n bins ends with ceil(n / 8) after three
# stride-2 convs; the bands are concatenated on F.
MRD_SIZES = {
    2048: (32, (102, 154, 256, 256, 257), 130),  # 13 + 20 + 32 + 32 + 33
    1024: (63, (51, 77, 128, 128, 129), 66),  # 7 + 10 + 16 + 16 + 17
    512: (125, (25, 39, 64, 64, 65), 34),  # 4 + 5 + 8 + 8 + 9
}


@pytest.mark.parametrize("window", sorted(MRD_SIZES))
def test_multiband_stft_discriminator_shapes(window):
    frames, band_bins, out_bins = MRD_SIZES[window]
    assert frames == math.ceil(S / (window // 4)) and sum(band_bins) == window // 2 + 1
    assert out_bins == sum(math.ceil(n / 8) for n in band_bins)
    logits, feats = _output_shapes(MultiBandSTFTDiscriminator(window, channels=C))
    assert logits == (2, frames, out_bins, 1)
    assert len(feats) == 5 * 5 + 1  # five maps per band, then the logits
    for b, n in enumerate(band_bins):
        sizes = [n, math.ceil(n / 2), math.ceil(n / 4), math.ceil(n / 8), math.ceil(n / 8)]
        assert [f[2] for f in feats[5 * b : 5 * b + 5]] == sizes
    assert all(f[:2] == (2, frames) for f in feats)


def test_discriminators_lists_every_sub_discriminator():
    cfg = tiny_discriminators("all")  # periods (2, 3), 2 MSD scales, 2 STFT and 2 MRD windows
    outs = jax.eval_shape(Discriminators(cfg).init_with_output, jax.random.key(0), WAV)[0]
    assert len(outs) == 2 + 2 + 2 + 2
    assert [len(feats) for _, feats in outs] == [6, 6, 8, 8, 6, 6, 26, 26]
    assert [lg.shape for lg, _ in outs[:2]] == [(2, 99, 2, 1), (2, 66, 3, 1)]


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="'mbd'"):
        DiscriminatorConfig(kinds=("mpd", "mbd"))
    with pytest.raises(ValueError, match="multiple of 4"):
        DiscriminatorConfig(kinds=("msd",), channels=6)
    with pytest.raises(ValueError, match="unknown discriminator config keys"):
        DiscriminatorConfig.from_dict({"kinds": ["mpd"], "width": 3})
    cfg = dac_discriminators()
    d = cfg.to_dict()
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}  # as JSON gives it
    assert DiscriminatorConfig.from_dict(d) == cfg
    assert hash(DiscriminatorConfig(kinds=["mpd"])) == hash(DiscriminatorConfig(kinds=("mpd",)))


# -- gradients -----------------------------------------------------------------------------------


def _random_params(module, wav, seed=0):
    """Parameters of `module` drawn in numpy from eval_shape's tree (directions ~ N(0, 1), unit
    weight-norm magnitudes, small biases): compiling a random init of every layer costs far more
    on the CPU than this test itself."""
    shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), wav))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "weight_g":
            return np.ones(leaf.shape, np.float32)
        scale = 0.01 if name == "bias" else 1.0
        return (scale * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def test_gradients_flow_through_every_sub_discriminator():
    cfg = DiscriminatorConfig(**{**tiny_discriminators("all").to_dict(), "normalize_input": True})
    disc = Discriminators(cfg)
    wav = jnp.asarray(0.1 * np.random.default_rng(1).standard_normal((1, S)), jnp.float32)
    params = _random_params(disc, wav)

    def per_disc_loss(x):  # one generator loss per sub-discriminator
        outs = disc.apply(params, x)
        return jnp.stack([L.adversarial_generator_loss([lg], "lsgan") for lg, _ in outs])

    grads = jax.jit(jax.jacrev(per_disc_loss))(wav)  # [8 sub-discriminators, 1, S]
    grads = np.asarray(grads)
    assert grads.shape == (8, 1, S)
    assert np.isfinite(grads).all()
    norms = np.linalg.norm(grads.reshape(8, -1), axis=1)
    assert (norms > 0).all(), norms


# -- full-size presets ---------------------------------------------------------------------------


def _conv(k: int, c_in: int, c_out: int, groups: int = 1) -> int:
    """Weight-normed conv with bias: k * c_in / groups * c_out weights + g and bias per output."""
    return k * c_in // groups * c_out + 2 * c_out


MPD = (_conv(5, 1, 32) + _conv(5, 32, 128) + _conv(5, 128, 512) + _conv(5, 512, 1024)
       + _conv(5, 1024, 1024) + _conv(3, 1024, 1))  # fmt: skip
MSD = (_conv(15, 1, 128) + _conv(41, 128, 128, 4) + _conv(41, 128, 256, 16)
       + _conv(41, 256, 512, 16) + _conv(41, 512, 1024, 16) + _conv(41, 1024, 1024, 16)
       + _conv(5, 1024, 1024) + _conv(3, 1024, 1))  # fmt: skip
STFT = _conv(27, 2, 32) + 3 * _conv(27, 32, 32) + _conv(9, 32, 32) + _conv(9, 32, 1)
MRD = 5 * (_conv(27, 2, 32) + 3 * _conv(27, 32, 32) + _conv(9, 32, 32)) + _conv(9, 32, 1)


@pytest.mark.parametrize(
    "preset,expected",
    [
        (encodec_discriminators, 5 * STFT),
        (dac_discriminators, 5 * MPD + 3 * MRD),
        (hifigan_discriminators, 5 * MPD + 3 * MSD),
    ],
    ids=["encodec", "dac", "hifigan"],
)
def test_full_size_presets_eval_shape(preset, expected):
    cfg = preset()
    disc = Discriminators(cfg)
    variables = jax.eval_shape(
        disc.init, jax.random.key(0), jax.ShapeDtypeStruct((1, S), jnp.float32)
    )
    count = _num_params(variables)
    per_sub = {k: _num_params(v) for k, v in nn.meta.unbox(variables)["params"].items()}
    message = f"{preset.__name__}: {count:,} parameters; per sub-discriminator {per_sub}"
    assert count == expected, message
    print(message)
