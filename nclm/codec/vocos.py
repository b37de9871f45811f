"""Vocos decoder: ConvNeXt backbone at the frame rate and an iSTFT head (REFERENCE.md section 3).

It replaces a waveform decoder: z[B, T, D] (the quantized latent) -> wav[B, T * hop, 1]. With
`condition_on_levels`, its LayerNorms are adaptive and pick a row by the number of RVQ levels the
codes carry, so one decoder serves every bitrate (a row per count, or per count listed in
`condition_levels`, as the published Vocos-EnCodec has for its four bandwidths).
"""

from __future__ import annotations

import numbers

import flax.linen as nn
import jax
import jax.numpy as jnp

from nclm.audio.stft import istft_same
from nclm.codec.config import VocosConfig
from nclm.nn import Conv1d, ConvNeXtBlock
from nclm.nn import init as initializers
from nclm.nn.norms import layer_norm
from nclm.sharding import BATCH_ONLY, constrain

MAX_MAGNITUDE = 100.0  # exp(log-magnitude) is clipped here, as in Vocos, to keep the iSTFT finite


class VocosDecoder(nn.Module):
    cfg: VocosConfig
    hop: int
    num_levels: int  # number of AdaLN rows when conditioned

    @nn.compact
    def __call__(
        self,
        z: jax.Array,
        levels_used: jax.Array | int | None = None,
        lengths: jax.Array | None = None,  # int[B] valid frames: rows end as lone clips would
    ) -> jax.Array:
        cfg = self.cfg
        n_fft = cfg.n_fft or 4 * self.hop
        conditions = 0
        if cfg.condition_on_levels:
            conditions = len(cfg.condition_levels) or self.num_levels
        cond_id = None
        if conditions:
            used = self.num_levels if levels_used is None else levels_used
            cond_id = jnp.broadcast_to(condition_row(cfg, used), (z.shape[0],))
        x = Conv1d(cfg.dim, 7, padding=3, weight_norm=False, init_std=0.02, name="embed")(
            z, lengths
        )
        x = layer_norm(x, cond_id, conditions, "norm")
        for i in range(cfg.num_layers):
            x = ConvNeXtBlock(cfg.hidden, 1.0 / cfg.num_layers, conditions, name=f"block_{i}")(
                x, cond_id, lengths
            )
            x = constrain(x, BATCH_ONLY)
        x = nn.LayerNorm(epsilon=1e-6, dtype=x.dtype, name="final_norm")(x)
        head = nn.Dense(
            n_fft + 2, kernel_init=initializers.truncated_normal(0.02), dtype=x.dtype, name="head"
        )
        return istft_head(head(x), n_fft, self.hop, lengths)


def condition_row(cfg: VocosConfig, levels_used: jax.Array | int) -> jax.Array:
    """The AdaLN row for codes of `levels_used` levels: count - 1, or with `condition_levels` the
    row of the largest listed count <= it. A static count that is not listed is an error (the
    decoder never learned it); traced counts (training's random levels) take the row below."""
    listed = cfg.condition_levels
    if not listed:
        return jnp.asarray(levels_used, jnp.int32) - 1
    if isinstance(levels_used, numbers.Integral) and levels_used not in listed:  # numpy ints too
        raise ValueError(
            f"this Vocos decoder decodes codes of {', '.join(map(str, listed))} levels "
            f"(vocos.condition_levels), got {levels_used}"
        )
    at_or_below = jnp.asarray(levels_used)[..., None] >= jnp.asarray(listed)
    return jnp.maximum(jnp.sum(at_or_below, axis=-1, dtype=jnp.int32) - 1, 0)


def istft_head(x: jax.Array, n_fft: int, hop: int, lengths: jax.Array | None = None) -> jax.Array:
    """x[B, T, n_fft + 2] = (log-magnitude, phase) -> wav[B, T * hop, 1], in float32."""
    x = x.astype(jnp.float32)
    log_mag, phase = jnp.split(x, 2, axis=-1)
    mag = jnp.minimum(jnp.exp(log_mag), MAX_MAGNITUDE)
    spec = mag * (jnp.cos(phase) + 1j * jnp.sin(phase))
    return istft_same(spec, n_fft, hop, lengths)[..., None]
