"""Fused attention kernels fed our masks in their own terms (nclm.nn.attention_mask.MaskSpec).

cuDNN (GPU) takes a causal flag and per-row key lengths: one contiguous run of real keys per
row, counted from the start. Our real keys come in two runs (the real text, then the audio after
the text padding), so the keys are first gathered per row into packed order, real text then
audio, which attention does not see (a softmax over keys ignores their order):

    packed key j' = j' (j' < prefix_len)   or   P + j' - prefix_len (an audio key)
    not causal:  all queries x packed keys, key_value_seq_lengths = prefix_len + suffix_len
    causal:      text queries x text keys [0, P), lengths prefix_len, not causal; and the queries
                 packed the same way (audio query a at row prefix_len + a) x packed keys,
                 is_causal, lengths prefix_len + suffix_len: audio query a sees the real text
                 and audio keys 0..a. Each output row is read back from its own call.

No log-sum-exp merging, so the kernel's own backward pass gives exact gradients (jax's cuDNN
backward ignores the log-sum-exp output's cotangent). Rows that see no key get length 1 here and
are zeroed by the caller (an empty softmax is undefined in a kernel).

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


def _pack(x: jax.Array, prefix_len: jax.Array, prefix_slots: int, num: int) -> jax.Array:
    """x[B, S, ...] -> [B, num, ...]: rows [0, prefix_len) then rows prefix_slots, ... per row."""
    j = jnp.arange(num)[None]
    src = jnp.where(j < prefix_len[:, None], j, prefix_slots + j - prefix_len[:, None])
    src = jnp.clip(src, 0, x.shape[1] - 1)  # past the real keys: masked by the lengths
    return jnp.take_along_axis(x, src.reshape(*src.shape, *(1,) * (x.ndim - 2)), axis=1)


def lengths_attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,
    spec: MaskSpec,
    implementation: str = "cudnn",
) -> jax.Array:
    """Attention by jax.nn.dot_product_attention with lengths and is_causal only (no dense mask).
    implementation="xla" runs the same arguments through jax's reference (the CPU tests). Rows
    that see no key are left undefined (the caller zeroes them)."""
    if implementation == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(
            f"attention='cudnn' needs bfloat16 or float16 compute (got {q.dtype}): set the "
            "compute dtype, or use attention='blockwise'"
        )
    attend = functools.partial(jax.nn.dot_product_attention, implementation=implementation)
    t, s, p = q.shape[1], k.shape[1], spec.prefix_slots
    text = jnp.minimum(spec.prefix_len, p).astype(jnp.int32)
    total = jnp.maximum(text + jnp.minimum(spec.suffix_len, s - p), 1).astype(jnp.int32)
    k_packed, v_packed = _pack(k, text, p, s), _pack(v, text, p, s)
    if not spec.causal:
        return attend(q, k_packed, v_packed, key_value_seq_lengths=total)
    out = attend(_pack(q, text, p, t), k_packed, v_packed, is_causal=True,
                 key_value_seq_lengths=total)  # fmt: skip
    rows = text[:, None] + jnp.arange(t - p)[None]  # audio query a sits at packed row text + a
    audio = jnp.take_along_axis(out, jnp.clip(rows, 0, t - 1)[..., None, None], axis=1)
    if p == 0:
        return audio
    text_out = attend(q[:, :p], k[:, :p], v[:, :p], key_value_seq_lengths=jnp.maximum(text, 1))
    return jnp.concatenate([text_out, audio], axis=1)


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
