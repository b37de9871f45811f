"""EnCodec's SEANet encoder and decoder (REFERENCE.md section 1). x[B, S, 1] <-> z[B, T, D]."""

from __future__ import annotations

import flax.linen as nn
import jax

from nclm.codec.config import SEANetConfig
from nclm.nn import Conv1d, ConvTranspose1d, ResidualLSTM
from nclm.nn.conv import apply_masked
from nclm.sharding import BATCH_ONLY, constrain


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
    def __call__(self, x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        dim = x.shape[-1]  # stride 1, same length: `lengths` stay valid
        y = _conv(
            self.cfg,
            dim // self.cfg.compress,
            self.cfg.residual_kernel_size,
            dilation=self.dilation,
            name="conv_0",
        )(nn.elu(x), lengths)
        y = _conv(self.cfg, dim, 1, name="conv_1")(nn.elu(y), lengths)
        skip = _conv(self.cfg, dim, 1, name="shortcut")(x, lengths) if self.cfg.conv_shortcut else x
        return constrain(skip + y, BATCH_ONLY)


class SEANetEncoder(nn.Module):
    cfg: SEANetConfig

    @nn.compact
    def __call__(self, wav: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """wav[B, S, 1] -> z[B, T, latent_dim]; `lengths` (int[B] samples) as in Conv1d."""
        cfg = self.cfg
        x, n = apply_masked(_conv(cfg, cfg.channels, cfg.kernel_size, name="stem"), wav, lengths)
        x = constrain(x, BATCH_ONLY)
        width = cfg.channels
        for i, stride in enumerate(cfg.strides):
            for j in range(cfg.num_residual_layers):
                x = SEANetResidualUnit(cfg, cfg.dilation_base**j, name=f"block_{i}_res_{j}")(x, n)
            width *= 2
            down = _conv(cfg, width, 2 * stride, stride, name=f"block_{i}_down")
            x, n = apply_masked(down, nn.elu(x), n)
            x = constrain(x, BATCH_ONLY)
        if cfg.lstm_layers:  # unidirectional: frames past the end never reach valid ones
            x = constrain(ResidualLSTM(cfg.lstm_layers, name="lstm")(x), BATCH_ONLY)
        z = _conv(cfg, cfg.latent_dim, cfg.last_kernel_size, name="head")(nn.elu(x), n)
        return constrain(z, BATCH_ONLY)


class SEANetDecoder(nn.Module):
    cfg: SEANetConfig

    @nn.compact
    def __call__(self, z: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """z[B, T, latent_dim] -> wav[B, T * hop, 1]; `lengths` (int[B] frames) as in Conv1d."""
        cfg = self.cfg
        width = cfg.channels * 2 ** len(cfg.strides)
        x, n = apply_masked(_conv(cfg, width, cfg.kernel_size, name="stem"), z, lengths)
        x = constrain(x, BATCH_ONLY)
        if cfg.lstm_layers:
            x = constrain(ResidualLSTM(cfg.lstm_layers, name="lstm")(x), BATCH_ONLY)
        for i, stride in enumerate(reversed(cfg.strides)):
            width //= 2
            up = ConvTranspose1d(
                width,
                2 * stride,
                stride,
                trim="causal" if cfg.causal else "centered",
                name=f"block_{i}_up",
            )
            x, n = apply_masked(up, nn.elu(x), n)
            x = constrain(x, BATCH_ONLY)
            for j in range(cfg.num_residual_layers):
                x = SEANetResidualUnit(cfg, cfg.dilation_base**j, name=f"block_{i}_res_{j}")(x, n)
        return _conv(cfg, 1, cfg.last_kernel_size, name="head")(nn.elu(x), n)
