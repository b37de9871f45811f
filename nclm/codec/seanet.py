"""EnCodec's SEANet encoder and decoder (REFERENCE.md section 1). x[B, S, 1] <-> z[B, T, D]."""

from __future__ import annotations

import flax.linen as nn
import jax

from nclm.codec.config import SEANetConfig
from nclm.nn import Conv1d, ConvTranspose1d, ResidualLSTM


def _conv(
    cfg: SEANetConfig,
    features: int,
    kernel: int,
    stride: int = 1,
    dilation: int = 1,
    name: str | None = None,
) -> Conv1d:
    return Conv1d(
        features,
        kernel,
        stride,
        dilation,
        padding="causal" if cfg.causal else "centered",
        pad_mode=cfg.pad_mode,
        name=name,
    )


class SEANetResidualUnit(nn.Module):
    """ELU -> conv k (dilation d) to dim/compress -> ELU -> conv 1 back to dim, plus the skip."""

    cfg: SEANetConfig
    dilation: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        y = _conv(
            self.cfg,
            dim // self.cfg.compress,
            self.cfg.residual_kernel_size,
            dilation=self.dilation,
            name="conv_0",
        )(nn.elu(x))
        y = _conv(self.cfg, dim, 1, name="conv_1")(nn.elu(y))
        skip = _conv(self.cfg, dim, 1, name="shortcut")(x) if self.cfg.conv_shortcut else x
        return skip + y


class SEANetEncoder(nn.Module):
    cfg: SEANetConfig

    @nn.compact
    def __call__(self, wav: jax.Array) -> jax.Array:  # [B, S, 1] -> [B, T, latent_dim]
        cfg = self.cfg
        x = _conv(cfg, cfg.channels, cfg.kernel_size, name="stem")(wav)
        width = cfg.channels
        for i, stride in enumerate(cfg.strides):
            for j in range(cfg.num_residual_layers):
                x = SEANetResidualUnit(cfg, cfg.dilation_base**j, name=f"block_{i}_res_{j}")(x)
            width *= 2
            x = _conv(cfg, width, 2 * stride, stride, name=f"block_{i}_down")(nn.elu(x))
        if cfg.lstm_layers:
            x = ResidualLSTM(cfg.lstm_layers, name="lstm")(x)
        return _conv(cfg, cfg.latent_dim, cfg.last_kernel_size, name="head")(nn.elu(x))


class SEANetDecoder(nn.Module):
    cfg: SEANetConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:  # [B, T, latent_dim] -> [B, T * hop, 1]
        cfg = self.cfg
        width = cfg.channels * 2 ** len(cfg.strides)
        x = _conv(cfg, width, cfg.kernel_size, name="stem")(z)
        if cfg.lstm_layers:
            x = ResidualLSTM(cfg.lstm_layers, name="lstm")(x)
        for i, stride in enumerate(reversed(cfg.strides)):
            width //= 2
            x = ConvTranspose1d(
                width,
                2 * stride,
                stride,
                trim="causal" if cfg.causal else "centered",
                name=f"block_{i}_up",
            )(nn.elu(x))
            for j in range(cfg.num_residual_layers):
                x = SEANetResidualUnit(cfg, cfg.dilation_base**j, name=f"block_{i}_res_{j}")(x)
        return _conv(cfg, 1, cfg.last_kernel_size, name="head")(nn.elu(x))
