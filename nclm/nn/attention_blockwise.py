"""Blockwise attention for CPU (and any XLA backend): memory O(block_q x block_k), not O(Tq x Lk).

For each block of queries (`lax.map`), a `lax.scan` over blocks of keys keeps the online-softmax
statistics in float32 (FlashAttention's recurrence):

    s = q k^T / sqrt(H)  on the block, -inf where the mask hides a key
    m' = max(m, max_k s)        c = exp(m - m')      p = exp(s - m')
    d' = c d + sum_k p          acc' = c acc + p v
    out = acc / d  (0 where d = 0: a query that sees no key)

A key block the mask hides entirely from the whole query block is skipped (`lax.cond`): the
causal upper triangle, padding past the longest row. The scan body is rematerialised, so a
backward pass keeps only the carries, not the score blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nclm.nn.attention_mask import MaskSpec


def _pad_to(x: jax.Array, size: int, axis: int = 1) -> jax.Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad)


def blockwise_attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    spec: MaskSpec,
    block_q: int = 512,
    block_k: int = 512,
) -> jax.Array:
    """-> [B, T, N, H] in q's dtype; equal to dense masked attention up to float rounding."""
    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    g = n // kh
    bq, bk = min(block_q, t), min(block_k, s)
    nq, nk = -(-t // bq), -(-s // bk)
    qb = _pad_to(q * jnp.asarray(h**-0.5, q.dtype), nq * bq).reshape(b, nq, bq, kh, g, h)
    kb = _pad_to(k, nk * bk).reshape(b, nk, bk, kh, h).swapaxes(0, 1)  # [nk, B, bk, K, H]
    vb = _pad_to(v, nk * bk).reshape(b, nk, bk, kh, h).swapaxes(0, 1)

    def query_block(args):
        qi, qblk = args  # qblk [B, bq, K, G, H]
        q_index = qi * bq + jnp.arange(bq)

        def update(carry, kblk, vblk, mask):
            m, den, acc = carry  # m, den [B, K, G, bq]; acc [B, K, G, bq, H], float32
            logits = jnp.einsum("bqkgh,bskh->bkgqs", qblk, kblk, preferred_element_type=jnp.float32)
            logits = jnp.where(mask[:, None, None], logits, -jnp.inf)
            m_new = jnp.maximum(m, logits.max(-1))
            base = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # rows with no key yet: exp(-inf) = 0
            p = jnp.exp(logits - base[..., None])
            c = jnp.exp(m - base)
            pv = jnp.einsum("bkgqs,bskh->bkgqh", p.astype(vblk.dtype), vblk,
                            preferred_element_type=jnp.float32)  # fmt: skip
            return m_new, c * den + p.sum(-1), c[..., None] * acc + pv

        @jax.checkpoint
        def step(carry, xs):
            ki, kblk, vblk = xs
            k_index = ki * bk + jnp.arange(bk)
            mask = spec.block(q_index, k_index) & (k_index < s)[None, None]
            carry = jax.lax.cond(
                mask.any(), lambda c: update(c, kblk, vblk, mask), lambda c: c, carry
            )
            return carry, None

        init = (
            jnp.full((b, kh, g, bq), -jnp.inf, jnp.float32),
            jnp.zeros((b, kh, g, bq), jnp.float32),
            jnp.zeros((b, kh, g, bq, h), jnp.float32),
        )
        (_, den, acc), _ = jax.lax.scan(step, init, (jnp.arange(nk), kb, vb))
        out = acc / jnp.where(den > 0, den, 1.0)[..., None]  # [B, K, G, bq, H]
        return out.transpose(0, 3, 1, 2, 4).reshape(b, bq, n, h).astype(q.dtype)

    out = jax.lax.map(query_block, (jnp.arange(nq), qb.swapaxes(0, 1)))  # [nq, B, bq, N, H]
    return out.swapaxes(0, 1).reshape(b, nq * bq, n, h)[:, :t]
