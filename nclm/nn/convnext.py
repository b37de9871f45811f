"""ConvNeXt block at the frame rate (Vocos backbone), with optional adaptive LayerNorm."""

from __future__ import annotations

import flax.linen as nn
import jax

from nclm.nn import init as initializers
from nclm.nn.conv import Conv1d
from nclm.nn.norms import layer_norm


class ConvNeXtBlock(nn.Module):
    """x + gamma * Linear(GELU(Linear(Norm(DepthwiseConv7(x))))), gamma starts at `layer_scale`."""

    hidden: int
    layer_scale: float
    num_conditions: int = 0
    kernel_size: int = 7

    @nn.compact
    def __call__(
        self, x: jax.Array, cond_id: jax.Array | None = None, lengths: jax.Array | None = None
    ) -> jax.Array:
        dim = x.shape[-1]
        y = Conv1d(
            dim,
            self.kernel_size,
            groups=dim,
            padding=self.kernel_size // 2,
            weight_norm=False,
            init_std=0.02,  # Vocos: trunc_normal(0.02) for every conv and linear layer
            name="dwconv",
        )(x, lengths)
        y = layer_norm(y, cond_id, self.num_conditions, "norm")
        init = initializers.truncated_normal(0.02)
        y = nn.Dense(self.hidden, kernel_init=init, dtype=x.dtype, name="pwconv1")(y)
        y = jax.nn.gelu(y, approximate=False)
        y = nn.Dense(dim, kernel_init=init, dtype=x.dtype, name="pwconv2")(y)
        gamma = self.param(
            "gamma",
            nn.with_logical_partitioning(nn.initializers.constant(self.layer_scale), ("embed",)),
            (dim,),
        )
        return x + gamma.astype(y.dtype) * y
