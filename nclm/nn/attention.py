"""Multi-head attention with rotary positions and an explicit KV cache.

The cache is a value, passed in and returned (DESIGN.md decision 1): one layer's keys and values
are `k, v: [B, L, K, H]` (L the preallocated length, K the key/value heads). A call with `cache`
writes its K/V rows at `write_index[B]` (each row its own offset, so prompts of different lengths
decode together) and attends over the whole buffer; `mask[B, Tq, L]` says which keys each query
may see, so stale rows beyond a row's length are never read. Without a cache the call attends
over its own keys (training, full forward).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from nclm.nn import init as initializers


class LayerCache(NamedTuple):
    k: jax.Array  # [B, L, K, H]
    v: jax.Array  # [B, L, K, H]


def rotary(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """RoPE on x[B, T, N, H] at integer positions[B, T] (per row: decoding rows sit at different
    positions), rotating the two halves of H by angles p / base^(2i/H), in float32."""
    half = x.shape[-1] // 2
    freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions.astype(jnp.float32)[..., None, None] * freq  # [B, T, 1, H/2]
    sin, cos = jnp.sin(angle), jnp.cos(angle)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _write_rows(buffer: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """buffer[B, L, K, H] with new[B, T, K, H] written at rows index[B]..index[B] + T.

    A write that cannot fit is never silent (dynamic_update_slice would clamp the index and
    overwrite the last rows): T > L fails at trace time; an index outside [0, L - T] (a traced
    value) writes NaN rows instead, and NaN values reach every output of that batch row (masked
    keys get probability 0, and 0 * NaN is NaN). Poisoning rather than checkify or a host
    callback: it costs one select on T rows inside a jitted decode loop and changes no signature.
    """
    num_new, size = new.shape[1], buffer.shape[1]
    if num_new > size:
        raise ValueError(f"KV cache: writing {num_new} rows into a cache of {size} rows")
    fits = (index >= 0) & (index <= size - num_new)  # [B]
    new = jnp.where(fits[:, None, None, None], new.astype(buffer.dtype), jnp.nan)
    return jax.vmap(lambda b, n, i: jax.lax.dynamic_update_slice(b, n, (i, 0, 0)))(
        buffer, new, index
    )


class Attention(nn.Module):
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_base: float = 10000.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,  # [B, T, D]
        positions: jax.Array,  # int32[B, T]
        mask: jax.Array,  # bool[B, T, T] or, with a cache, bool[B, T, L]
        cache: LayerCache | None = None,
        write_index: jax.Array | None = None,  # int32[B], with a cache
    ) -> tuple[jax.Array, LayerCache | None]:
        n, k, h = self.num_heads, self.num_kv_heads, self.head_dim
        init = initializers.truncated_normal(x.shape[-1] ** -0.5)

        def proj(heads, name):
            return nn.DenseGeneral(
                (heads, h),
                kernel_init=nn.with_logical_partitioning(init, ("embed", "heads", "kv")),
                use_bias=False,
                dtype=self.dtype,
                name=name,
            )(x)

        q = rotary(proj(n, "query"), positions, self.rope_base)
        key = rotary(proj(k, "key"), positions, self.rope_base)
        value = proj(k, "value")
        if cache is not None:
            cache = LayerCache(
                _write_rows(cache.k, key, write_index), _write_rows(cache.v, value, write_index)
            )
            key, value = cache.k.astype(self.dtype), cache.v.astype(self.dtype)
        out = jax.nn.dot_product_attention(q, key, value, mask=mask[:, None])  # softmax in f32
        out = nn.DenseGeneral(
            x.shape[-1],
            axis=(-2, -1),
            kernel_init=nn.with_logical_partitioning(
                initializers.truncated_normal((n * h) ** -0.5), ("heads", "kv", "embed")
            ),
            use_bias=False,
            dtype=self.dtype,
            name="out",
        )(out)
        return out, cache
