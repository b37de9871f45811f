"""A stacked LSTM with PyTorch's gate layout, scanned over time (EnCodec's sequence model)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from nclm.nn import init as initializers


class LSTMLayer(nn.Module):
    """One LSTM layer. Gates are ordered (input, forget, cell, output) as in torch.nn.LSTM; the two
    PyTorch biases are stored as their sum. The input projection of all frames is one matmul; only
    the recurrent matmul runs inside `lax.scan`. The recurrence (h, c) runs in float32 whatever the
    input dtype: the cell state accumulates over every frame."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, D] -> [B, T, features]
        h_dim = self.features
        shifted = initializers.uniform(1.0 / h_dim**0.5)  # torch: U(-1/sqrt(H), 1/sqrt(H))
        w_ih = self.param(
            "w_ih",
            nn.with_logical_partitioning(shifted, ("embed", "mlp")),
            (x.shape[-1], 4 * h_dim),
        )
        w_hh = self.param(
            "w_hh", nn.with_logical_partitioning(shifted, ("embed", "mlp")), (h_dim, 4 * h_dim)
        )
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)), (4 * h_dim,)
        )
        gates_x = jnp.einsum("btd,dg->tbg", x, w_ih.astype(x.dtype)) + bias.astype(x.dtype)
        gates_x = gates_x.astype(jnp.float32)

        def step(carry, gx):
            h, c = carry
            gates = gx + (h.astype(x.dtype) @ w_hh.astype(x.dtype)).astype(jnp.float32)
            i, f, g, o = jnp.split(gates, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        zeros = jnp.zeros((x.shape[0], h_dim), jnp.float32)
        _, hs = jax.lax.scan(step, (zeros, zeros), gates_x)
        return jnp.swapaxes(hs, 0, 1).astype(x.dtype)


class ResidualLSTM(nn.Module):
    """`num_layers` stacked LSTMs with a skip around the whole stack: y = LSTM(x) + x."""

    num_layers: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = x
        for i in range(self.num_layers):
            y = LSTMLayer(x.shape[-1], name=f"layer_{i}")(y)
        return y + x
