"""2-D convolution over time-frequency (or time-period) planes, for the discriminators.

Arrays are channels-last: x[B, T, F, C]; the kernel is [kt, kf, C_in/groups, C_out] (PyTorch
[C_out, C_in/groups, kt, kf]). Padding is explicit zeros per dimension, as torch.nn.Conv2d:

    T_out = floor((T + pt_left + pt_right - ((kt - 1) * dt + 1)) / st) + 1      (same for F)

Weight norm is per output channel, w = g * v / ||v|| with the norm over (kt, kf, C_in/groups),
which is PyTorch's weight_norm(dim=0) on a Conv2d.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from nclm.nn.conv import add_bias, conv_kernel

CONV2D_AXES = (None, None, "conv_in", "conv_out")

Pair = tuple[int, int]
Padding2d = int | Pair | tuple[Pair, Pair]


def _pair(value: int | Pair) -> Pair:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def conv2d_padding(padding: Padding2d) -> tuple[Pair, Pair]:
    """((t_left, t_right), (f_left, f_right)) from an int, a per-dim int pair, or explicit pairs."""
    if isinstance(padding, int):
        padding = (padding, padding)
    t, f = padding
    return _pair(t), _pair(f)


def conv2d_output_shape(
    size: Pair,
    kernel_size: Pair,
    strides: int | Pair = 1,
    dilation: int | Pair = 1,
    padding: Padding2d = 0,
) -> Pair:
    """(T_out, F_out) of `Conv2d` on a (T, F) plane."""
    strides, dilation = _pair(strides), _pair(dilation)
    out = []
    for n, k, s, d, (lo, hi) in zip(size, kernel_size, strides, dilation, conv2d_padding(padding)):
        out.append((n + lo + hi - ((k - 1) * d + 1)) // s + 1)
    return out[0], out[1]


class Conv2d(nn.Module):
    """x[B, T, F, C_in] -> [B, T', F', features]; see the module docstring for the arithmetic."""

    features: int
    kernel_size: Pair
    strides: int | Pair = 1
    dilation: int | Pair = 1
    padding: Padding2d = 0
    groups: int = 1
    weight_norm: bool = True
    use_bias: bool = True
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"Conv2d: expected x[B, T, F, C], got shape {x.shape}")
        in_features = x.shape[-1]
        if in_features % self.groups or self.features % self.groups:
            raise ValueError(
                f"Conv2d: channels {in_features} -> {self.features} not divisible by "
                f"groups={self.groups}"
            )
        kt, kf = _pair(self.kernel_size)
        shape = (kt, kf, in_features // self.groups, self.features)
        # [kt, kf, C_in/groups, C_out], weight norm per output channel (PyTorch's dim=0)
        kernel = conv_kernel(self, shape, CONV2D_AXES, self.weight_norm, 3, (0, 1, 2))
        dtype = self.dtype or x.dtype
        y = jax.lax.conv_general_dilated(
            x.astype(dtype),
            kernel.astype(dtype),
            window_strides=_pair(self.strides),
            padding=conv2d_padding(self.padding),
            rhs_dilation=_pair(self.dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.groups,
        )
        return add_bias(self, y) if self.use_bias else y
