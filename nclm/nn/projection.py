"""Dense projection over trailing axes, x[..., *in] -> [..., *out], its kernel in either of two
layouts:

    in_out   kernel [*in, *out], as flax's DenseGeneral stores it: training and every checkpoint
    out_in   kernel [*out, *in]: cached decoding (nclm.lm.model.for_decoding converts once)

Why a second layout: a decoding step multiplies a few rows by every weight of the model, so it is
bound by reading the weights. XLA:CPU multiplies 8 rows by an in_out [1024, 4096] kernel at a
third of the read bandwidth, and by an out_in kernel, product feature-major [out, rows], at full
bandwidth: 12 such kernels at 8 rows took 45 ms against 15 ms, and 14 ms against 11 ms at 1 row
(BENCHMARKS.md, "Kernel layout"). So on the CPU few rows take that product, behind an
optimization barrier that keeps XLA from folding the transpose back into it; many rows (a
prefill), and every call on other backends, take the usual product [rows, out], which costs the
same in either layout (an [out, in] kernel is what torch's Linear hands cuBLAS).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

LAYOUTS = ("in_out", "out_in")
_FEW_ROWS = 64  # up to here the feature-major product wins (8 rows: 3x; 256 rows: 10-20% slower)


def to_out_in(kernel: jax.Array, num_in: int) -> jax.Array:
    """An in_out kernel [*in, *out] as out_in [*out, *in]."""
    axes = tuple(range(kernel.ndim))
    return jnp.transpose(kernel, axes[num_in:] + axes[:num_in])


class Projection(nn.Module):
    """x[..., *in] -> x . kernel (+ bias) [..., *out], the kernel in `layout` (see above)."""

    features: int | tuple[int, ...]
    kernel_axes: tuple[str, ...]  # logical axis names of the in_out kernel [*in, *out]
    kernel_init: Callable
    num_in: int = 1  # trailing input axes contracted
    use_bias: bool = True
    dtype: Any = jnp.float32
    layout: str = "in_out"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.layout not in LAYOUTS:
            raise ValueError(f"kernel layout {self.layout!r}: expected one of {LAYOUTS}")
        out = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        num_in = self.num_in
        in_out_shape = x.shape[-num_in:] + out
        if len(self.kernel_axes) != len(in_out_shape):
            raise ValueError(f"kernel_axes {self.kernel_axes} for a kernel {in_out_shape}")
        if self.layout == "in_out":
            init, names = self.kernel_init, self.kernel_axes
        else:  # drawn in the in_out shape, so both layouts start from the same numbers

            def init(key, shape, dtype=jnp.float32):
                return to_out_in(self.kernel_init(key, in_out_shape, dtype), num_in)

            names = self.kernel_axes[num_in:] + self.kernel_axes[:num_in]
        shape = in_out_shape if self.layout == "in_out" else out + x.shape[-num_in:]
        kernel = self.param("kernel", nn.with_logical_partitioning(init, names), shape)
        bias = None
        if self.use_bias:
            zeros = nn.with_logical_partitioning(nn.initializers.zeros, self.kernel_axes[num_in:])
            bias = self.param("bias", zeros, out)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)

        x_in = tuple(range(x.ndim - num_in, x.ndim))
        lead = x.ndim - num_in
        if self.layout == "in_out":
            y = jax.lax.dot_general(x, kernel, ((x_in, tuple(range(num_in))), ((), ())))
        else:
            # As 2-D products: XLA canonicalises an N-D dot_general's rhs to [*in, *out] and
            # would copy the kernel to that order on every call (a transposed copy of each
            # [N, H, in] attention kernel per prefill).
            rows_shape = x.shape[:lead]
            x2 = x.reshape(rows_shape + (math.prod(x.shape[lead:]),))
            k2 = kernel.reshape(math.prod(out), -1)
            if math.prod(rows_shape) <= _FEW_ROWS and jax.default_backend() == "cpu":
                # [out, *lead], then to [*lead, out] after the barrier
                y = jax.lax.dot_general(k2, x2, (((1,), (lead,)), ((), ())))
                y = jax.lax.optimization_barrier(y)
                y = jnp.moveaxis(y, 0, -1)
            else:
                y = jax.lax.dot_general(x2, k2, (((lead,), (1,)), ((), ())))
            y = y.reshape(rows_shape + out)
        if bias is not None:
            y = y + bias
        return y
