"""DAC's encoder and decoder: weight-normed convs, Snake activations, dilated residual units
(REFERENCE.md section 2). x[B, S, 1] <-> z[B, T, D]."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from nclm.codec.config import DACNetConfig
from nclm.nn import Conv1d, ConvTranspose1d, Snake

DILATIONS = (1, 3, 9)


class DACResidualUnit(nn.Module):
    """Snake -> conv k7 (dilation d, same length) -> Snake -> conv k1, added to the input (the input
    is center-cropped if the convs shortened it)."""

    dilation: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        y = Snake(name="snake_0")(x)
        y = Conv1d(dim, 7, dilation=self.dilation, padding=3 * self.dilation, name="conv_0")(y)
        y = Conv1d(dim, 1, name="conv_1")(Snake(name="snake_1")(y))
        crop = (x.shape[1] - y.shape[1]) // 2
        if crop > 0:
            x = x[:, crop : x.shape[1] - crop]
        return x + y


class DACEncoder(nn.Module):
    cfg: DACNetConfig

    @nn.compact
    def __call__(self, wav: jax.Array) -> jax.Array:  # [B, S, 1] -> [B, T, latent_dim]
        cfg = self.cfg
        x = Conv1d(cfg.encoder_channels, 7, padding=3, name="stem")(wav)
        width = cfg.encoder_channels
        for i, stride in enumerate(cfg.strides):
            for j, d in enumerate(DILATIONS):
                x = DACResidualUnit(d, name=f"block_{i}_res_{j}")(x)
            width *= 2
            x = Snake(name=f"block_{i}_snake")(x)
            x = Conv1d(
                width, 2 * stride, stride, padding=math.ceil(stride / 2), name=f"block_{i}_down"
            )(x)
        x = Snake(name="head_snake")(x)
        return Conv1d(cfg.latent_dim, 3, padding=1, name="head")(x)


class DACDecoder(nn.Module):
    cfg: DACNetConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:  # [B, T, latent_dim] -> [B, ~T * hop, 1]
        cfg = self.cfg
        width = cfg.decoder_channels
        x = Conv1d(width, 7, padding=3, name="stem")(z)
        for i, stride in enumerate(reversed(cfg.strides)):
            width //= 2
            x = Snake(name=f"block_{i}_snake")(x)
            x = ConvTranspose1d(
                width, 2 * stride, stride, trim=math.ceil(stride / 2), name=f"block_{i}_up"
            )(x)
            for j, d in enumerate(DILATIONS):
                x = DACResidualUnit(d, name=f"block_{i}_res_{j}")(x)
        x = Snake(name="head_snake")(x)
        return jnp.tanh(Conv1d(1, 7, padding=3, name="head")(x))
