"""1-D convolutions for codecs: weight norm, causal/centered padding and their length arithmetic.

Arrays are channels-last: x[B, T, C]. Kernels are [K, C_in, C_out] (transposed convs too).

Padding modes of `Conv1d` (k = effective kernel (kernel_size - 1) * dilation + 1, s = stride):

    "causal"    EnCodec/SEANet: pad k - s on the left, plus the extra right padding that makes the
                last window complete, so T_out = ceil(T / s).
    "centered"  EnCodec non-causal: the k - s padding split (left gets the odd sample), plus the
                same extra right padding; T_out = ceil(T / s).
    int p       PyTorch-style symmetric padding (DAC): T_out = floor((T + 2p - k) / s) + 1.

    causal, k=4, s=2:   [pad pad | x0 x1 x2 x3 x4 | extra]   windows start every 2 samples

`ConvTranspose1d` computes the full output (T - 1) * s + K and then trims, either PyTorch-style
(`padding=p`, p from each side) or EnCodec-style (`trim="causal"`: all K - s from the right;
`"centered"`: split, right gets the smaller half).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nclm.nn import init as initializers

Padding = str | int

CONV_AXES = (None, "conv_in", "conv_out")


def effective_kernel(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size - 1) * dilation + 1


def extra_padding(length: int, kernel: int, stride: int) -> int:
    """Right padding that makes the last strided window complete (EnCodec's `pad_for_conv1d`)."""
    padding_total = kernel - stride
    num_frames = math.ceil((length - kernel + padding_total) / stride) + 1
    ideal_length = (num_frames - 1) * stride + kernel - padding_total
    return max(ideal_length - length, 0)


def conv_padding(length: int, kernel: int, stride: int, padding: Padding) -> tuple[int, int]:
    """Left and right padding for a conv over `length` samples."""
    if isinstance(padding, int):
        return padding, padding
    total = kernel - stride
    extra = extra_padding(length, kernel, stride)
    if padding == "causal":
        return total, extra
    if padding == "centered":
        right = total // 2
        return total - right, right + extra
    raise ValueError(f"conv padding must be 'causal', 'centered' or an int, got {padding!r}")


def conv_output_length(
    length: int, kernel_size: int, stride: int = 1, dilation: int = 1, padding: Padding = 0
) -> int:
    k = effective_kernel(kernel_size, dilation)
    left, right = conv_padding(length, k, stride, padding)
    return (length + left + right - k) // stride + 1


def transpose_trim(kernel_size: int, stride: int, trim: Padding) -> tuple[int, int]:
    """Samples removed from the left and right of a transposed conv's full output."""
    if isinstance(trim, int):
        return trim, trim
    total = kernel_size - stride
    if trim == "causal":
        return 0, total
    if trim == "centered":
        right = total // 2
        return total - right, right
    raise ValueError(f"transposed conv trim must be 'causal', 'centered' or an int, got {trim!r}")


def conv_transpose_output_length(length: int, kernel_size: int, stride: int, trim: Padding) -> int:
    left, right = transpose_trim(kernel_size, stride, trim)
    return (length - 1) * stride + kernel_size - left - right


def pad_time(x: jax.Array, left: int, right: int, mode: str = "constant") -> jax.Array:
    """Pads axis 1 of x[B, T, C]. Reflect padding of a clip shorter than the pad first appends
    zeros (as EnCodec does), so tiny inputs still work."""
    if left == 0 and right == 0:
        return x
    if mode == "constant":
        return jnp.pad(x, ((0, 0), (left, right), (0, 0)))
    if mode != "reflect":
        raise ValueError(f"pad mode must be 'constant' or 'reflect', got {mode!r}")
    length = x.shape[1]
    extra = max(left, right) - length + 1 if length <= max(left, right) else 0
    if extra:
        x = jnp.pad(x, ((0, 0), (0, extra), (0, 0)))
    x = jnp.pad(x, ((0, 0), (left, right), (0, 0)), mode="reflect")
    return x[:, : x.shape[1] - extra] if extra else x


def fill_past_end(
    x: jax.Array, lengths: jax.Array, mode: str = "constant", max_pad: jax.Array | int = 0
) -> jax.Array:
    """x[B, T, C] with each row's positions t >= lengths[b] replaced by what a conv sees past the
    end of a clip of exactly that length: zeros, or (mode "reflect") torch's reflect padding of
    the clip. Reflecting needs at least max_pad + 1 samples, so EnCodec first extends a shorter
    clip with zeros to that length and reflects about the extended end: so do we, per row, with
    `max_pad` (int[B] or int) the larger of the row's left and right padding. A row padded to a
    shape bucket then computes exactly what it would alone at its own length."""
    t = jnp.arange(x.shape[1])
    n = jnp.asarray(lengths, jnp.int32)[:, None]
    if mode != "reflect":
        return jnp.where((t < n)[..., None], x, jnp.zeros((), x.dtype))
    end = jnp.maximum(n, jnp.asarray(max_pad, jnp.int32).reshape(-1, 1) + 1)
    index = jnp.clip(jnp.where(t < end, t, 2 * (end - 1) - t), 0, x.shape[1] - 1)
    values = jnp.take_along_axis(x, index[..., None], axis=1)
    return jnp.where((index < n)[..., None], values, jnp.zeros((), x.dtype))


def _extra_padding_per_row(lengths: jax.Array, kernel: int, stride: int) -> jax.Array:
    """`extra_padding` for int[B] lengths (the same arithmetic, traced)."""
    total = kernel - stride
    num_frames = -(-(lengths - kernel + total) // stride) + 1
    return jnp.maximum((num_frames - 1) * stride + kernel - total - lengths, 0)


def weight_normed(v: jax.Array, g: jax.Array, axes: Sequence[int]) -> jax.Array:
    """w = g * v / ||v||, the norm taken over `axes` (PyTorch's weight_norm with dim=0)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(axes), keepdims=True))
    return v * (jnp.expand_dims(g, tuple(axes)) / norm)


def conv_kernel(
    module: nn.Module,
    shape: tuple[int, ...],
    logical_axes: tuple[str | None, ...],
    weight_norm: bool,
    norm_axis: int,
    fan_in_axes: tuple[int, ...],
    init_std: float | None = None,
) -> jax.Array:
    """Creates a conv kernel of `shape` (any rank); with weight norm, as direction `weight_v` and
    per-channel magnitude `weight_g` (over `norm_axis`), initialised so that w = v at step 0.
    Initialised as PyTorch does by default (fan in over `fan_in_axes`), or truncated normal with
    `init_std`."""
    if init_std is None:
        init = initializers.torch_default(fan_in_axes)
    else:
        init = initializers.truncated_normal(init_std)
    if not weight_norm:
        return module.param("kernel", nn.with_logical_partitioning(init, logical_axes), shape)
    v = module.param("weight_v", nn.with_logical_partitioning(init, logical_axes), shape)
    axes = tuple(a for a in range(len(shape)) if a != norm_axis)

    def g_init(key, _shape):
        return jnp.sqrt(jnp.sum(jnp.square(nn.meta.unbox(v)), axis=axes))

    g = module.param(
        "weight_g",
        nn.with_logical_partitioning(g_init, (logical_axes[norm_axis],)),
        (shape[norm_axis],),
    )
    return weight_normed(v, g, axes)


def add_bias(module: nn.Module, y: jax.Array) -> jax.Array:
    """y[..., C] plus a zero-initialised per-channel bias of `module` (its `features`)."""
    bias = module.param(
        "bias",
        nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
        (module.features,),
    )
    return y + bias.astype(y.dtype)


def apply_masked(
    conv: nn.Module, x: jax.Array, lengths: jax.Array | None
) -> tuple[jax.Array, jax.Array | None]:
    """conv(x, lengths) and the output's valid lengths (None stays None: no masking)."""
    y = conv(x, lengths)
    return y, None if lengths is None else conv.output_lengths(lengths)


class Conv1d(nn.Module):
    features: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    padding: Padding = 0
    pad_mode: str = "constant"
    weight_norm: bool = True
    init_std: float | None = None  # None: PyTorch's default init; else truncated normal
    use_bias: bool = True
    dtype: jnp.dtype | None = None

    def output_lengths(self, lengths: jax.Array) -> jax.Array:
        """Valid output frames of rows with `lengths` valid input frames (the length math above,
        per row: ceil(T / s) for causal/centered, PyTorch's formula for an int padding)."""
        if isinstance(self.padding, int):
            k = effective_kernel(self.kernel_size, self.dilation)
            return (lengths + 2 * self.padding - k) // self.stride + 1
        return -(-lengths // self.stride)

    def _max_pad(self, lengths: jax.Array) -> jax.Array:
        """The larger of the left and right padding a lone clip of `lengths` gets (reflect mode)."""
        k = effective_kernel(self.kernel_size, self.dilation)
        if isinstance(self.padding, int):
            return jnp.full_like(lengths, self.padding)
        total = k - self.stride
        extra = _extra_padding_per_row(lengths, k, self.stride)
        if self.padding == "causal":
            return jnp.maximum(total, extra)
        right = total // 2
        return jnp.maximum(total - right, right + extra)

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """x[B, T, C_in] -> [B, T', features]. With `lengths` (int[B] valid frames of each row),
        the samples past each row's end are replaced as a lone clip's padding would be, so the
        row's valid outputs do not depend on the bucket it was padded to."""
        in_features = x.shape[-1]
        if lengths is not None:
            x = fill_past_end(x, lengths, self.pad_mode, self._max_pad(lengths))
        if in_features % self.groups:
            raise ValueError(
                f"Conv1d: {in_features} input channels not divisible by groups={self.groups}"
            )
        k = effective_kernel(self.kernel_size, self.dilation)
        left, right = conv_padding(x.shape[1], k, self.stride, self.padding)
        x = pad_time(x, left, right, self.pad_mode)
        kernel = conv_kernel(
            self,
            (self.kernel_size, in_features // self.groups, self.features),
            CONV_AXES,
            self.weight_norm,
            2,
            (0, 1),
            self.init_std,
        )
        dtype = self.dtype or x.dtype
        if self.groups == in_features == self.features and self.stride == 1:
            y = depthwise_conv(x.astype(dtype), kernel.astype(dtype), self.dilation).astype(dtype)
        else:
            y = jax.lax.conv_general_dilated(
                x.astype(dtype),
                kernel.astype(dtype),
                window_strides=(self.stride,),
                padding="VALID",
                rhs_dilation=(self.dilation,),
                dimension_numbers=("NWC", "WIO", "NWC"),
                feature_group_count=self.groups,
            )
        return add_bias(self, y) if self.use_bias else y


def depthwise_conv(x: jax.Array, kernel: jax.Array, dilation: int = 1) -> jax.Array:
    """A stride-1 convolution with one group per channel, x[B, T, C] (already padded) and
    kernel[K, 1, C] -> [B, T - (K - 1) * dilation, C] in float32: the sum of K shifted copies of
    x, each scaled per channel. XLA:CPU runs such a grouped `conv_general_dilated` as C tiny
    convolutions (7 ms for Vocos's 384-channel, kernel-7 conv over 375 frames, about 100 x this
    one fused loop); GPUs and TPUs fuse the sum just as well."""
    taps, frames = kernel.shape[0], x.shape[1] - (kernel.shape[0] - 1) * dilation
    x, kernel = x.astype(jnp.float32), kernel.astype(jnp.float32)
    return sum(x[:, i * dilation : i * dilation + frames] * kernel[i, 0] for i in range(taps))


class ConvTranspose1d(nn.Module):
    """Transposed conv as one matmul plus an overlap-add: y[t*s + k] += x[t] @ W[k].

    This is exact, fast on every backend, and keeps the PyTorch weight layout easy to map
    (torch [C_in, C_out, K] -> ours [K, C_in, C_out]). Weight norm is per input channel, as
    PyTorch's weight_norm(dim=0) does for ConvTranspose1d.
    """

    features: int
    kernel_size: int
    stride: int
    trim: Padding = 0
    weight_norm: bool = True
    use_bias: bool = True
    dtype: jnp.dtype | None = None

    def output_lengths(self, lengths: jax.Array) -> jax.Array:
        left, right = transpose_trim(self.kernel_size, self.stride, self.trim)
        return (lengths - 1) * self.stride + self.kernel_size - left - right

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """x[B, T, C_in] -> [B, T', features]; frames past `lengths` (int[B]) contribute nothing."""
        if lengths is not None:
            x = fill_past_end(x, lengths)
        batch, length, in_features = x.shape
        s, k = self.stride, self.kernel_size
        # torch's fan in for a transposed conv is C_out * K (its weight is [C_in, C_out, K])
        kernel = conv_kernel(
            self, (k, in_features, self.features), CONV_AXES, self.weight_norm, 1, (0, 2)
        )
        dtype = self.dtype or x.dtype
        blocks = -(-k // s)  # each input frame writes `blocks` stride-sized blocks of output
        kernel = jnp.pad(kernel, ((0, blocks * s - k), (0, 0), (0, 0))).astype(dtype)
        z = jnp.einsum("btc,kco->btko", x.astype(dtype), kernel)
        z = z.reshape(batch, length, blocks, s, self.features)
        out = sum(
            jnp.pad(z[:, :, j], ((0, 0), (j, blocks - 1 - j), (0, 0), (0, 0)))
            for j in range(blocks)
        )
        out = out.reshape(batch, (length + blocks - 1) * s, self.features)
        left, right = transpose_trim(k, s, self.trim)
        out = out[:, left : (length - 1) * s + k - right]
        return add_bias(self, out) if self.use_bias else out
