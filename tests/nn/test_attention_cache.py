"""Attention with fewer key/value heads than query heads (GQA) against a NumPy reference that
repeats each KV head for its group of query heads; cached decoding == full forward with GQA; and a
KV-cache write that cannot fit is an error (trace time) or NaN (run time), never a silent
overwrite of the cache's last rows."""

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nclm.nn.attention import Attention, LayerCache

B, T, D, N, K, H = 2, 7, 32, 4, 2, 8  # 4 query heads share 2 KV heads (groups of 2)
LAYER = Attention(N, K, H)


def _inputs():
    x = np.random.default_rng(0).standard_normal((B, T, D)).astype(np.float32)
    positions = np.broadcast_to(np.arange(T), (B, T)).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(positions)


@flax.struct.dataclass
class _Dense:
    """A dense bool[B, Tq, Lk] mask posing as a MaskSpec on the dense (xla) path, which these
    short passes take: the tests need per-row cache offsets, which a MaskSpec does not carry."""

    mask: jax.Array

    def dense(self, num_q: int, num_k: int) -> jax.Array:
        return self.mask

    def query_sees_any(self, num_q: int) -> jax.Array:
        return self.mask.any(-1)


def _causal(t: int, length: int) -> _Dense:
    return _Dense(
        jnp.broadcast_to(jnp.arange(length)[None] <= jnp.arange(t)[:, None], (B, t, length))
    )


@pytest.fixture(scope="module")
def params():
    x, positions = _inputs()
    return nn.meta.unbox(LAYER.init(jax.random.key(1), x, positions, _causal(T, T)))["params"]


def _rope(x: np.ndarray, positions: np.ndarray, base: float = 10000.0) -> np.ndarray:
    """Rotate-half RoPE (GPT-NeoX convention): pairs (i, i + H/2) turn by p / base^(2i/H)."""
    half = x.shape[-1] // 2
    angle = positions[..., None, None] * base ** (-np.arange(half) / half)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * np.cos(angle) - x2 * np.sin(angle),
                           x2 * np.cos(angle) + x1 * np.sin(angle)], -1)  # fmt: skip


def _reference(p, x, positions) -> np.ndarray:
    """Causal multi-head attention in float64 with each KV head repeated for its N/K query heads
    (query head n reads KV head n // (N / K))."""
    x, pos = np.asarray(x, np.float64), np.asarray(positions)
    q = _rope(np.einsum("btd,dnh->btnh", x, p["query"]["kernel"]), pos)
    k = _rope(np.einsum("btd,dkh->btkh", x, p["key"]["kernel"]), pos)
    v = np.einsum("btd,dkh->btkh", x, p["value"]["kernel"])
    k, v = np.repeat(k, N // K, axis=2), np.repeat(v, N // K, axis=2)  # [B, T, N, H]
    logits = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(H)
    logits = np.where(np.tril(np.ones((T, T), bool)), logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.einsum("bnqk,bknh->bqnh", probs, v)
    return np.einsum("bqnh,nhd->bqd", out, p["out"]["kernel"])


def test_gqa_equals_repeated_kv_heads(params):
    assert params["key"]["kernel"].shape == (D, K, H) and params["query"]["kernel"].shape[1] == N
    x, positions = _inputs()
    out, _ = LAYER.apply({"params": params}, x, positions, _causal(T, T))
    np.testing.assert_allclose(np.asarray(out), _reference(params, x, positions), atol=1e-5)


def _decode(params, x, positions, prefill: int, length: int, offsets=(0, 0)):
    """Prefill `prefill` rows, then one cached call per row; row b of the batch is written at
    buffer rows offsets[b] + t. -> outputs [B, T, D] in time order."""
    apply = jax.jit(LAYER.apply)
    cache = LayerCache(jnp.zeros((B * K, length, H)), jnp.zeros((B * K, length, H)))
    offsets = jnp.asarray(offsets, jnp.int32)
    rows = jnp.arange(length)[None, None]
    outs = []
    for start, stop in [(0, prefill), *((t, t + 1) for t in range(prefill, T))]:
        seen = (rows >= offsets[:, None, None]) & (
            rows <= (offsets[:, None] + jnp.arange(start, stop)[None])[..., None]
        )
        out, cache = apply(
            {"params": params},
            x[:, start:stop],
            positions[:, start:stop],
            _Dense(seen),
            cache,
            offsets + start,
        )
        outs.append(out)
    return np.concatenate(outs, axis=1)


def test_gqa_cached_decoding_equals_full_forward(params):
    x, positions = _inputs()
    full, _ = LAYER.apply({"params": params}, x, positions, _causal(T, T))
    cached = _decode(params, x, positions, prefill=3, length=T + 2, offsets=(0, 2))
    np.testing.assert_allclose(cached, np.asarray(full), atol=1e-5, rtol=1e-5)


def test_impossible_cache_write_is_an_error_or_nan(params):
    x, positions = _inputs()
    cache = LayerCache(jnp.zeros((B * K, T - 1, H)), jnp.zeros((B * K, T - 1, H)))
    with pytest.raises(ValueError, match="writing 7 rows into a cache of 6 rows"):
        LAYER.apply({"params": params}, x, positions, _causal(T, T - 1), cache, jnp.zeros(B, int))
    old_layout = LayerCache(jnp.zeros((B, K, T, H)), jnp.zeros((B, K, T, H)))  # [B, K, L, H]
    with pytest.raises(ValueError, match=r"expected \[batch x kv_heads, length, head_dim\]"):
        LAYER.apply({"params": params}, x, positions, _causal(T, T), old_layout, jnp.zeros(B, int))
    # Row 0 starts at buffer row 3 of 8: its last 2 writes fall outside the buffer. Row 1 fits.
    full, _ = LAYER.apply({"params": params}, x, positions, _causal(T, T))
    cached = _decode(params, x, positions, prefill=3, length=T + 1, offsets=(3, 0))
    assert np.isfinite(cached[0, :5]).all() and np.isnan(cached[0, 5:]).all()
    np.testing.assert_allclose(cached[1], np.asarray(full[1]), atol=1e-5, rtol=1e-5)
