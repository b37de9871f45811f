"""Activations with parameters."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class Snake(nn.Module):
    """snake(x) = x + sin^2(alpha x) / (alpha + 1e-9), alpha learned per channel, init 1 (DAC)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, C]
        alpha = self.param(
            "alpha",
            nn.with_logical_partitioning(nn.initializers.ones, ("conv_in",)),
            (x.shape[-1],),
        ).astype(x.dtype)
        return x + jnp.reciprocal(alpha + 1e-9) * jnp.square(jnp.sin(alpha * x))
