"""Fused attention kernels fed our masks in their own terms (nclm.nn.attention_mask.MaskSpec).

cuDNN (GPU) takes a causal flag and per-row key lengths, one contiguous run of real keys per
row, while our keys are real in two runs (the text prefix, then the audio suffix). So the
attention runs once per key region and the two partial results are merged through their
log-sum-exps, as FlashAttention merges key blocks:

    prefix region  all queries x keys [0, P)    key_value_seq_lengths = prefix_len, not causal
    suffix region  queries x keys [P, Lk)       key_value_seq_lengths = suffix_len, is_causal;
                   (causal: queries [P, Tq) only, top-left aligned, so row P + i sees P..P + i)
    out = (e^{lse_1} out_1 + e^{lse_2} out_2) / (e^{lse_1} + e^{lse_2})

Splash attention (TPU, Pallas) takes one static block-sparse mask for the structure (causal
with an always-visible prefix, or full) and segment ids for the per-row padding: real keys get
segment 0 like every query, padding keys segment 1.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from nclm.nn.attention_mask import MaskSpec


def _merge(parts: list[tuple[jax.Array, jax.Array, jax.Array]]) -> jax.Array:
    """parts of (out[B, T, N, H], lse[B, T, N], has[B, T]: the part saw a key) -> merged out.
    A part without keys has no defined lse (a kernel may return anything): it is dropped."""
    lses = [jnp.where(has[..., None], lse.astype(jnp.float32), -jnp.inf) for _, lse, has in parts]
    m = functools.reduce(jnp.maximum, lses)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    num, den = 0.0, 0.0
    for (out, _, has), lse in zip(parts, lses, strict=True):
        w = jnp.where(has[..., None], jnp.exp(lse - m), 0.0)  # [B, T, N]
        num = num + w[..., None] * jnp.where(has[..., None, None], out.astype(jnp.float32), 0.0)
        den = den + w
    return (num / jnp.where(den > 0, den, 1.0)[..., None]).astype(parts[0][0].dtype)


def lengths_attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,
    spec: MaskSpec,
    implementation: str = "cudnn",
) -> jax.Array:
    """Attention by jax.nn.dot_product_attention with lengths and is_causal only (no dense mask).
    implementation="xla" runs the same arguments through jax's reference (the CPU tests)."""
    if implementation == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(
            f"attention='cudnn' needs bfloat16 or float16 compute (got {q.dtype}): set the "
            "compute dtype, or use attention='blockwise'"
        )
    t, s, p = q.shape[1], k.shape[1], spec.prefix_slots
    attend = functools.partial(
        jax.nn.dot_product_attention, implementation=implementation, return_residual=True
    )
    parts = []
    if p > 0:
        out, lse = attend(
            q, k[:, :p], v[:, :p], key_value_seq_lengths=jnp.minimum(spec.prefix_len, p)
        )
        parts.append((out, lse, jnp.broadcast_to(spec.prefix_len[:, None] > 0, q.shape[:2])))
    first = p if spec.causal else 0  # causal: queries before the suffix see none of it
    if s > p and t > first:
        out, lse = attend(
            q[:, first:],
            k[:, p:],
            v[:, p:],
            is_causal=spec.causal,
            key_value_seq_lengths=jnp.minimum(spec.suffix_len, s - p).astype(jnp.int32),
        )
        pad = ((0, 0), (first, 0), (0, 0))
        has = (spec.suffix_len[:, None] > 0) & (jnp.arange(t)[None] >= first)
        parts.append((jnp.pad(out, (*pad, (0, 0))), jnp.pad(lse, pad), has))
    if not parts:
        return jnp.zeros_like(q)
    return _merge(parts)


@functools.lru_cache(maxsize=32)
def _splash_kernel(num_q: int, num_k: int, prefix: int, causal: bool, heads: int, mqa: bool,
                   block: int, interpret: bool):  # fmt: skip
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    if causal:
        rows, cols = np.arange(num_q)[:, None], np.arange(num_k)[None]
        structure = sm.NumpyMask((cols < prefix) | (cols <= rows))
    else:
        structure = sm.FullMask((num_q, num_k))
    sizes = sk.BlockSizes(*(block,) * 3, *(block,) * 3, *(block,) * 2)
    make = sk.make_splash_mqa if mqa else sk.make_splash_mha
    with jax.ensure_compile_time_eval():  # the block tables are constants, cached across traces
        return make(
            sm.MultiHeadMask([structure] * heads),
            block_sizes=sizes,
            head_shards=1,
            q_seq_shards=1,
            interpret=interpret,
        )


def splash_attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,
    spec: MaskSpec,
    block: int = 128,
    interpret: bool = False,
) -> jax.Array:
    """TPU splash attention (Pallas); interpret=True runs it on the CPU (tests). Lengths are
    padded to multiples of `block` (a multiple of 128)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    tp, sp = -(-t // block) * block, -(-s // block) * block
    real = spec.key_valid(jnp.arange(sp)) & (jnp.arange(sp) < s)[None]
    # a row with no real key would leave the kernel an empty softmax: let it see everything,
    # its output is zeroed below
    real = real | ~real.any(-1, keepdims=True)
    segments = sk.SegmentIds(jnp.zeros((b, tp), jnp.int32), jnp.where(real, 0, 1).astype(jnp.int32))
    kernel = _splash_kernel(tp, sp, spec.prefix_slots, spec.causal, n // kh, kh < n, block,
                            interpret)  # fmt: skip
    qh = jnp.pad(q * jnp.asarray(h**-0.5, q.dtype), ((0, 0), (0, tp - t), (0, 0), (0, 0)))
    qh = qh.reshape(b, tp, kh, n // kh, h).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
    kv = [jnp.pad(x, ((0, 0), (0, sp - s), (0, 0), (0, 0))).transpose(0, 2, 1, 3) for x in (k, v)]
    if kh < n:  # one multi-query kernel per key/value head
        per_row = jax.vmap(lambda q_, k_, v_, seg: kernel(q_, k_, v_, seg), (0, 0, 0, None))
        out = jax.vmap(per_row)(qh, kv[0], kv[1], segments)  # [B, K, G, T, H]
    else:
        out = jax.vmap(kernel)(qh[:, :, 0], kv[0], kv[1], segments)[:, :, None]
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, tp, n, h)[:, :t]
    return out.astype(q.dtype)
