"""Attention masks described as data, O(B) numbers instead of a dense bool[B, Tq, Lk].

Keys live in two regions of static sizes (the codec LM's `[text | audio]` layout):

    key slots  [0, P)            prefix region: the first prefix_len[b] are real, the rest padding
               [P, Lk)           suffix region: the first suffix_len[b] are real (P + a for a < len)

Query i may see key j when j is real and, if `causal`, either j is in the prefix region or j <= i
(queries occupy key rows [0, Tq): a full pass, or a prefill written at row 0 of a cache). So
    AR pass      prefix = text slots, causal: text sees real text, audio sees text + earlier audio
    NAR, masked  prefix = text slots, not causal: every slot sees every real slot
    cached step  prefix = the cache's text rows, suffix_len = the audio rows written so far
A query that sees no key gets a zero output in every implementation (fully padded rows).

Each kernel takes the description in its own terms (`nclm.nn.attention`): sequence lengths and a
causal flag (cuDNN), a static block mask plus segment ids (splash), per-block masks built on the
fly (blockwise). Only the dense reference builds `dense()`.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class MaskSpec:
    prefix_len: jax.Array  # int32[B], real keys in [0, prefix_slots)
    suffix_len: jax.Array  # int32[B], real keys in [prefix_slots, prefix_slots + suffix_len)
    prefix_slots: int = flax.struct.field(pytree_node=False, default=0)
    causal: bool = flax.struct.field(pytree_node=False, default=False)

    @classmethod
    def lengths(cls, key_len: jax.Array, causal: bool = False) -> MaskSpec:
        """Plain padding: the first key_len[b] keys are real (no prefix region)."""
        return cls(jnp.zeros_like(key_len), key_len, 0, causal)

    def key_valid(self, k_index: jax.Array) -> jax.Array:
        """bool[B, Lk']: which of the key slots k_index[Lk'] are real."""
        p, k = self.prefix_slots, k_index[None]
        return jnp.where(k < p, k < self.prefix_len[:, None], k - p < self.suffix_len[:, None])

    def block(self, q_index: jax.Array, k_index: jax.Array) -> jax.Array:
        """bool[B, Tq', Lk']: the mask at query rows q_index[Tq'] and key slots k_index[Lk']."""
        real = self.key_valid(k_index)[:, None, :]
        if not self.causal:
            return real
        k = k_index[None, None, :]
        return real & ((k < self.prefix_slots) | (k <= q_index[None, :, None]))

    def dense(self, num_q: int, num_k: int) -> jax.Array:
        """bool[B, Tq, Lk]: the reference mask (the `xla` implementation only)."""
        mask = self.block(jnp.arange(num_q), jnp.arange(num_k))
        return jnp.broadcast_to(mask, (mask.shape[0], num_q, num_k))

    def query_sees_any(self, num_q: int) -> jax.Array:
        """bool[B, Tq]: queries with at least one visible key (the others output zeros)."""
        any_prefix = jnp.minimum(self.prefix_len, self.prefix_slots) > 0
        any_suffix = self.suffix_len > 0
        if self.causal:  # a suffix query (row >= P) sees suffix key P once the suffix is real
            q = jnp.arange(num_q)[None]
            return any_prefix[:, None] | (any_suffix[:, None] & (q >= self.prefix_slots))
        return jnp.broadcast_to((any_prefix | any_suffix)[:, None], (any_prefix.shape[0], num_q))
