"""Token samplers over logits[B, V]: temperature, top-k, top-p, greedy and VALL-E 2 RAS.

All work is in float32 and branch-free, so every function runs under `jax.jit` and inside a
`lax.while_loop` body. `top_k`, `window` and the `SamplingConfig` are static (Python values);
`temperature`, `top_p`, `threshold` and `history_len` may be traced, as scalars or per row [B].

Filtering order (`filter_logits`), all in logit space:

    z = logits / T                                  T <= 0 leaves the scale alone (greedy, below)
    top-k:  z_v = -inf  where z_v < kth largest z    ties with the k-th value are kept
    top-p:  sort z descending, p = softmax(sorted), m_i = sum_{j<i} p_j  (exclusive cumsum)
            keep i while m_i < top_p                 smallest prefix whose mass reaches top_p;
                                                     m_0 = 0, so the top-1 is always kept

Masked entries are -inf, not a large finite number: `jax.random.categorical` takes the argmax of
z + Gumbel noise, where -inf stays -inf, and the top-1 is never masked, so no row is all -inf and
no NaN can arise (a finite min would overflow to -inf anyway once divided by T < 1).

`sample` draws from softmax(filtered z); a temperature <= 0 returns argmax(logits) instead, chosen
per row with `jnp.where`, so a traced temperature needs no recompile.

Repetition-aware sampling (VALL-E 2, arXiv 2406.05370), per step with the last K = window tokens:

    c  ~ softmax(filter(z))                         drawn with `key` itself
    c' ~ softmax(z)                                 drawn with fold_in(key, 1): temperature only
    r  = #{c among the last K valid history tokens} / K
    token = c' if r >= threshold else c

Both candidates are drawn every call. `>=` follows the public implementations (CosyVoice
`ras_sampling`: rep_num >= win_size * tau_r); with K = 10, threshold = 0.1 one repeat suffices.
Because c uses `key` unchanged, RAS with no repeats returns exactly `sample(key, ...)`. With
temperature <= 0 both candidates are the argmax, so RAS changes nothing.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

# Top-p mass within this of top_p counts as reaching it, so a boundary that is exact in real
# arithmetic (probs 0.5, 0.3, ... with top_p 0.5) does not flip on float32 rounding.
_TOP_P_EPS = 1e-6


def _per_row(x: ArrayLike, dtype) -> Array:
    """A scalar or [B] option as an array that broadcasts against [B, V]."""
    x = jnp.asarray(x, dtype)
    return x[..., None] if x.ndim == 1 else x


def filter_logits(logits: Array, temperature: ArrayLike, top_k: int, top_p: ArrayLike) -> Array:
    """Temperature -> top-k -> top-p on logits[B, V]; dropped entries become -inf (float32)."""
    logits = jnp.asarray(logits, jnp.float32)
    vocab = logits.shape[-1]
    t = _per_row(temperature, jnp.float32)
    logits = logits / jnp.where(t > 0, t, 1.0)

    if 0 < top_k < vocab:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)

    if isinstance(top_p, (int, float)) and top_p >= 1.0:
        return logits  # statically off: skip the sort
    p_cap = _per_row(top_p, jnp.float32)
    ordered = jnp.sort(logits, axis=-1, descending=True)
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # top_p >= 1 is "off" explicitly: the exclusive cumsum of the tail can round to 1.0.
    keep = (mass_before < p_cap - _TOP_P_EPS) | (p_cap >= 1.0)
    num_keep = jnp.maximum(jnp.sum(keep, axis=-1, keepdims=True), 1)
    # Scatter-free: keep everything at least as large as the last kept sorted value.
    cutoff = jnp.take_along_axis(ordered, num_keep - 1, axis=-1)
    return jnp.where(logits < cutoff, -jnp.inf, logits)


def sample(
    key: Array, logits: Array, temperature: ArrayLike, top_k: int, top_p: ArrayLike
) -> Array:
    """One token per row from logits[B, V] -> int32[B]; temperature <= 0 is greedy argmax."""
    logits = jnp.asarray(logits, jnp.float32)
    filtered = filter_logits(logits, temperature, top_k, top_p)
    sampled = jax.random.categorical(key, filtered, axis=-1)
    greedy = jnp.argmax(logits, axis=-1)
    t = jnp.asarray(temperature, jnp.float32)
    return jnp.where(t > 0, sampled, greedy).astype(jnp.int32)


def count_recent(history: Array, history_len: ArrayLike, tokens: Array, window: int) -> Array:
    """How often tokens[B] occurs among history[b, history_len[b] - window : history_len[b]].

    history is a preallocated int32[B, W] buffer in which only entries < history_len are valid;
    positions before 0 (a short history) count as no match. Returns int32[B].
    """
    batch, width = history.shape
    ends = jnp.broadcast_to(jnp.asarray(history_len, jnp.int32), (batch,))
    idx = ends[:, None] - window + jnp.arange(window, dtype=jnp.int32)[None]  # [B, K]
    valid = (idx >= 0) & (idx < width)
    recent = jnp.take_along_axis(history, jnp.clip(idx, 0, width - 1), axis=-1)
    return jnp.sum(valid & (recent == tokens[:, None]), axis=-1, dtype=jnp.int32)


def repetition_aware_sample(
    key: Array,
    logits: Array,
    history: Array,
    history_len: ArrayLike,
    *,
    temperature: ArrayLike = 1.0,
    top_k: int = 0,
    top_p: ArrayLike = 1.0,
    window: int = 10,
    threshold: ArrayLike = 0.1,
) -> Array:
    """VALL-E 2 RAS (module docstring): the filtered draw unless it repeats too often -> int32[B].

    The filtered candidate uses `key`, the unfiltered one `jax.random.fold_in(key, 1)`.
    """
    filtered = sample(key, logits, temperature, top_k, top_p)
    unfiltered = sample(jax.random.fold_in(key, 1), logits, temperature, 0, 1.0)
    repeats = count_recent(history, history_len, filtered, window)
    # r >= threshold as counts (repeats >= ceil(threshold * K)), so that 1 / 10 >= 0.1 holds
    # whatever the float32 rounding of threshold * K.
    min_repeats = jnp.ceil(jnp.asarray(threshold, jnp.float32) * window - 1e-4)
    too_often = repeats >= min_repeats
    return jnp.where(too_often, unfiltered, filtered)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How AR tokens are drawn. Hashable, so it can be a static argument of `jax.jit`."""

    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    repetition_aware: bool = False  # VALL-E 2 RAS
    ras_window: int = 10
    ras_threshold: float = 0.1

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"--top-k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1] (1 = off), got {self.top_p}")
        if not isinstance(self.ras_window, int) or self.ras_window < 1:
            raise ValueError(f"--ras-window must be an integer >= 1, got {self.ras_window!r}")
        if not 0 <= self.ras_threshold <= 1:
            raise ValueError(f"--ras-threshold must be in [0, 1], got {self.ras_threshold}")


def sample_tokens(
    key: Array,
    logits: Array,
    history: Array | None,
    history_len: ArrayLike | None,
    cfg: SamplingConfig,
) -> Array:
    """Draw int32[B] from logits[B, V] as `cfg` says; history is only read when RAS is on."""
    if not cfg.repetition_aware:
        return sample(key, logits, cfg.temperature, cfg.top_k, cfg.top_p)
    if history is None or history_len is None:
        raise ValueError("sample_tokens: repetition_aware sampling needs history and history_len")
    return repetition_aware_sample(
        key,
        logits,
        history,
        history_len,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        window=cfg.ras_window,
        threshold=cfg.ras_threshold,
    )
