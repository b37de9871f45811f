"""Layer norms, plain or adaptive (scale and shift picked per example by a condition id)."""

from __future__ import annotations

import flax.linen as nn
import jax


class AdaLayerNorm(nn.Module):
    """LayerNorm whose scale and shift are rows of two tables picked by a condition id
    (Vocos: the bandwidth id). Scale rows start at 1 and shift rows at 0."""

    num_conditions: int
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array, cond_id: jax.Array) -> jax.Array:  # x[B,T,D], cond_id[B]
        dim = x.shape[-1]
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (None, "embed")),
            (self.num_conditions, dim),
        )
        shift = self.param(
            "shift",
            nn.with_logical_partitioning(nn.initializers.zeros, (None, "embed")),
            (self.num_conditions, dim),
        )
        x = nn.LayerNorm(epsilon=self.epsilon, use_scale=False, use_bias=False, dtype=x.dtype)(x)
        return x * scale[cond_id][:, None, :].astype(x.dtype) + shift[cond_id][:, None, :].astype(
            x.dtype
        )


def layer_norm(
    x: jax.Array, cond_id: jax.Array | None, num_conditions: int, name: str, epsilon: float = 1e-6
) -> jax.Array:
    """Plain LayerNorm, or AdaLayerNorm when the module is conditioned (num_conditions > 0)."""
    if num_conditions:
        return AdaLayerNorm(num_conditions, epsilon, name=name)(x, cond_id)
    return nn.LayerNorm(epsilon=epsilon, dtype=x.dtype, name=name)(x)  # statistics in float32
