"""Multi-head attention with rotary positions and an explicit KV cache.

The cache is a value, passed in and returned (DESIGN.md decision 1): one layer's keys and values
are `k, v: [B x K, L, H]` (row b x K + k holds example b's KV head k; L the preallocated length).
A call with `cache` writes its K/V rows at `write_index[B]` (each row its own offset, so prompts
of different lengths decode together) and attends over the whole buffer; the mask (a
`MaskSpec`: lengths and a causal flag, nclm.nn.attention_mask) says which keys each query may
see, so stale rows beyond a row's length are never read. Without a cache the call attends over
its own keys (training, full forward).

The cache is heads-major so that a decoding step's two matmuls batch over (B x K) with the cache
as it lies in memory: over a [B, L, K, H] buffer XLA transposes the whole cache of every layer on
every step (9x slower attention at batch 8 on the CPU). Batch and heads share one axis because the
products take the buffer exactly as the loop carries it: over [B, K, L, H] at batch 1, XLA drops
the unit axis for the product, and the reshaped view made it update (and copy) the cache twice
per step. Cached steps (few queries) read it directly (`attend_cache`); a prefill attends with
the chosen implementation over a transposed view.

`attend` runs one of several implementations of the same masked attention:
    xla        jax's dense reference: float32 scores [B, N, Tq, Lk] under a dense mask
    blockwise  key-block loop with an online softmax, memory O(blocks) (any XLA backend)
    cudnn      cuDNN flash attention with key lengths and is_causal, keys packed (GPU, 16-bit)
    splash     Pallas splash attention with a block-sparse mask and segment ids (TPU)
    auto       by platform: few queries -> xla, whose scores are only [.., Tq, Lk]; else GPU in
               16-bit -> cudnn, TPU -> splash, otherwise blockwise past one block
Cached steps (few queries over a cache) always take `attend_cache`, the dense reference over the
cache's heads-major layout, whatever the setting.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from nclm.nn import init as initializers
from nclm.nn.attention_blockwise import blockwise_attention
from nclm.nn.attention_fused import lengths_attention, splash_attention
from nclm.nn.attention_mask import MaskSpec
from nclm.nn.projection import Projection
from nclm.sharding import constrain

_HEADS = ("batch", "length", "heads", "kv")  # q, k, v and the attention output [B, T, N, H]

IMPLEMENTATIONS = ("auto", "xla", "blockwise", "cudnn", "splash")
_FEW_QUERIES = 16  # cached steps: dense scores [B, N, Tq, Lk] are small, no kernel needed
_BLOCK = 512  # blockwise: queries and keys per block


class LayerCache(NamedTuple):
    k: jax.Array  # [B x K, L, H]
    v: jax.Array  # [B x K, L, H]


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
    """buffer[B x K, L, H] with new[B, T, K, H] written at rows index[B]..index[B] + T.

    A write that cannot fit is never silent (dynamic_update_slice would clamp the index and
    overwrite the last rows): T > L fails at trace time; an index outside [0, L - T] (a traced
    value) writes NaN rows instead, and NaN values reach every output of that batch row (masked
    keys get probability 0, and 0 * NaN is NaN). Poisoning rather than checkify or a host
    callback: it costs one select on T rows inside a jitted decode loop and changes no signature.
    """
    batch, num_new, num_kv, head_dim = new.shape
    if buffer.ndim != 3 or buffer.shape[0] != batch * num_kv or buffer.shape[2] != head_dim:
        raise ValueError(
            f"KV cache of shape {buffer.shape}: expected [batch x kv_heads, length, head_dim] = "
            f"[{batch * num_kv}, L, {head_dim}] (nclm.nn.transformer.init_cache makes one)"
        )
    size = buffer.shape[1]
    if num_new > size:
        raise ValueError(f"KV cache: writing {num_new} rows into a cache of {size} rows")
    fits = (index >= 0) & (index <= size - num_new)  # [B]
    new = jnp.where(fits[:, None, None, None], new.astype(buffer.dtype), jnp.nan)
    # [B x K, T, H]: only the new rows are transposed
    new = jnp.swapaxes(new, 1, 2).reshape(batch * num_kv, num_new, head_dim)
    return jax.vmap(lambda b, n, i: jax.lax.dynamic_update_slice(b, n, (i, 0)))(
        buffer, new, jnp.repeat(index, num_kv)
    )


def attend_cache(q: jax.Array, k: jax.Array, v: jax.Array, spec: MaskSpec) -> jax.Array:
    """The dense masked attention of a few queries q[B, T, N, H] over a heads-major cache
    k, v [B x K, L, H] (grouped queries: head n reads KV head n // (N / K)), softmax in float32,
    -> [B, T, N, H]; a query that sees no key outputs zeros. Both matmuls batch over B x K with
    the cache as it lies in memory, so no step moves the cache; only the few queries and their
    outputs are transposed."""
    batch, num_q, num_heads, head_dim = q.shape
    num_kv, length = k.shape[0] // batch, k.shape[1]
    group = num_heads // num_kv
    qg = q.reshape(batch, num_q, num_kv, group, head_dim)
    qg = jnp.transpose(qg, (0, 2, 3, 1, 4)).reshape(batch * num_kv, group * num_q, head_dim)
    scores = jnp.einsum("nqh,nsh->nqs", qg, k, preferred_element_type=jnp.float32)
    mask = spec.dense(num_q, length)[:, None, None]  # [B, 1, 1, T, L]
    mask = jnp.broadcast_to(mask, (batch, num_kv, group, num_q, length)).reshape(scores.shape)
    scores = jnp.where(mask, scores * head_dim**-0.5, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("nqs,nsh->nqh", probs, v).reshape(batch, num_kv, group, num_q, head_dim)
    out = jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(q.shape)
    seen = spec.query_sees_any(num_q)[:, :, None, None]
    return jnp.where(seen, out, 0).astype(q.dtype)


def choose_implementation(implementation: str, q: jax.Array, platform: str | None = None) -> str:
    """The implementation `auto` stands for, for queries q[B, T, N, H] on `platform`."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention={implementation!r}: expected one of {IMPLEMENTATIONS}")
    if implementation != "auto":
        return implementation
    platform = platform or jax.default_backend()
    num_q, head_dim = q.shape[1], q.shape[-1]
    if num_q <= _FEW_QUERIES:
        return "xla"
    cudnn_fits = q.dtype in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 256
    if platform == "gpu" and cudnn_fits:
        return "cudnn"
    if platform == "tpu":
        return "splash"
    return "blockwise" if num_q > _BLOCK else "xla"


def attend(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    spec: MaskSpec,
    implementation: str = "auto",
) -> jax.Array:
    """Masked multi-head (grouped-query) attention, softmax in float32 -> [B, T, N, H]. A query
    that sees no key outputs zeros."""
    impl = choose_implementation(implementation, q)
    if impl == "blockwise":
        return blockwise_attention(q, k, v, spec, _BLOCK, _BLOCK)
    seen = spec.query_sees_any(q.shape[1])[:, :, None, None]
    if impl == "cudnn":
        return jnp.where(seen, lengths_attention(q, k, v, spec, "cudnn"), 0).astype(q.dtype)
    if impl == "splash":
        interpret = jax.default_backend() != "tpu"  # elsewhere the kernel is interpreted (tests)
        return jnp.where(seen, splash_attention(q, k, v, spec, interpret=interpret), 0).astype(
            q.dtype
        )
    mask = spec.dense(q.shape[1], k.shape[1])[:, None]
    return jnp.where(seen, jax.nn.dot_product_attention(q, k, v, mask=mask), 0).astype(q.dtype)


class Attention(nn.Module):
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_base: float = 10000.0
    dtype: Any = jnp.float32
    implementation: str = "auto"  # one of IMPLEMENTATIONS
    kernel_layout: str = "in_out"  # nclm.nn.projection.LAYOUTS

    @nn.compact
    def __call__(
        self,
        x: jax.Array,  # [B, T, D]
        positions: jax.Array,  # int32[B, T]
        mask: MaskSpec,  # over the call's own T keys or, with a cache, the L cache rows
        cache: LayerCache | None = None,
        write_index: jax.Array | None = None,  # int32[B], with a cache
    ) -> tuple[jax.Array, LayerCache | None]:
        n, k, h = self.num_heads, self.num_kv_heads, self.head_dim
        init = initializers.truncated_normal(x.shape[-1] ** -0.5)

        def proj(heads, name):
            return Projection(
                (heads, h),
                ("embed", "heads", "kv"),
                init,
                use_bias=False,
                dtype=self.dtype,
                layout=self.kernel_layout,
                name=name,
            )(x)

        q = constrain(rotary(proj(n, "query"), positions, self.rope_base), _HEADS)
        key = constrain(rotary(proj(k, "key"), positions, self.rope_base), _HEADS)
        value = constrain(proj(k, "value"), _HEADS)
        if cache is None:
            out = attend(q, key, value, mask, self.implementation)
        else:
            cache = LayerCache(
                _write_rows(cache.k, key, write_index), _write_rows(cache.v, value, write_index)
            )
            key, value = cache.k.astype(self.dtype), cache.v.astype(self.dtype)
            if q.shape[1] <= _FEW_QUERIES:  # a decoding step
                out = attend_cache(q, key, value, mask)
            else:  # a prefill: the implementation's kernel, over keys in sequence order
                b = q.shape[0]
                seq_major = tuple(
                    jnp.swapaxes(c.reshape(b, k, *c.shape[1:]), 1, 2) for c in (key, value)
                )
                out = attend(q, *seq_major, mask, self.implementation)
        out = constrain(out, _HEADS)
        out = Projection(
            x.shape[-1],
            ("heads", "kv", "embed"),
            initializers.truncated_normal((n * h) ** -0.5),
            num_in=2,
            use_bias=False,
            dtype=self.dtype,
            layout=self.kernel_layout,
            name="out",
        )(out)
        return out, cache
