"""DAC's encoder and decoder: weight-normed convs, Snake activations, dilated residual units
(REFERENCE.md section 2). x[B, S, 1] <-> z[B, T, D]."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from nclm.codec.config import DACNetConfig
from nclm.nn import Conv1d, ConvTranspose1d, Snake
from nclm.nn.conv import apply_masked
from nclm.sharding import BATCH_ONLY, constrain

DILATIONS = (1, 3, 9)


class DACResidualUnit(nn.Module):
    """Snake -> conv k7 (dilation d, same length) -> Snake -> conv k1, added to the input (the input
    is center-cropped if the convs shortened it)."""

    dilation: int

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        dim = x.shape[-1]
        y = Snake(name="snake_0")(x)
        conv_0 = Conv1d(dim, 7, dilation=self.dilation, padding=3 * self.dilation, name="conv_0")
        y = Conv1d(dim, 1, name="conv_1")(Snake(name="snake_1")(conv_0(y, lengths)), lengths)
        crop = (x.shape[1] - y.shape[1]) // 2
        if crop > 0:
            x = x[:, crop : x.shape[1] - crop]
        return constrain(x + y, BATCH_ONLY)


class DACEncoder(nn.Module):
    cfg: DACNetConfig

    @nn.compact
    def __call__(self, wav: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """wav[B, S, 1] -> z[B, T, latent_dim]; `lengths` (int[B] samples) as in Conv1d."""
        cfg = self.cfg
        x, n = apply_masked(Conv1d(cfg.encoder_channels, 7, padding=3, name="stem"), wav, lengths)
        x = constrain(x, BATCH_ONLY)
        width = cfg.encoder_channels
        for i, stride in enumerate(cfg.strides):
            for j, d in enumerate(DILATIONS):
                x = DACResidualUnit(d, name=f"block_{i}_res_{j}")(x, n)
            width *= 2
            x = Snake(name=f"block_{i}_snake")(x)
            down = Conv1d(
                width, 2 * stride, stride, padding=math.ceil(stride / 2), name=f"block_{i}_down"
            )
            x, n = apply_masked(down, x, n)
            x = constrain(x, BATCH_ONLY)
        x = Snake(name="head_snake")(x)
        return constrain(Conv1d(cfg.latent_dim, 3, padding=1, name="head")(x, n), BATCH_ONLY)


class DACDecoder(nn.Module):
    cfg: DACNetConfig

    @nn.compact
    def __call__(self, z: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """z[B, T, latent_dim] -> wav[B, ~T * hop, 1]; `lengths` (int[B] frames) as in Conv1d."""
        cfg = self.cfg
        width = cfg.decoder_channels
        x, n = apply_masked(Conv1d(width, 7, padding=3, name="stem"), z, lengths)
        x = constrain(x, BATCH_ONLY)
        for i, stride in enumerate(reversed(cfg.strides)):
            width //= 2
            x = Snake(name=f"block_{i}_snake")(x)
            up = ConvTranspose1d(
                width, 2 * stride, stride, trim=math.ceil(stride / 2), name=f"block_{i}_up"
            )
            x, n = apply_masked(up, x, n)
            x = constrain(x, BATCH_ONLY)
            for j, d in enumerate(DILATIONS):
                x = DACResidualUnit(d, name=f"block_{i}_res_{j}")(x, n)
        x = Snake(name="head_snake")(x)
        return jnp.tanh(Conv1d(1, 7, padding=3, name="head")(x, n))
