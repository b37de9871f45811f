"""nclm.decode.sampling: filtered sets, empirical frequencies, key conventions, jit and RAS.

Many draws come from one call on a batch of identical rows: each row gets its own noise.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nclm.decode.sampling import (
    SamplingConfig,
    count_recent,
    filter_logits,
    repetition_aware_sample,
    sample,
    sample_tokens,
)

PROBS = np.array([0.5, 0.3, 0.15, 0.05], np.float32)


def _rows(logits, n: int) -> jnp.ndarray:
    return jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (n, len(logits)))


def _kept(logits) -> np.ndarray:
    return np.isfinite(np.asarray(logits))


def test_greedy_is_argmax():
    logits = jax.random.normal(jax.random.key(0), (16, 50))
    want = np.argmax(np.asarray(logits), axis=-1)
    for top_k, top_p in [(0, 1.0), (5, 0.3)]:
        got = sample(jax.random.key(1), logits, 0.0, top_k, top_p)
        assert got.dtype == jnp.int32
        np.testing.assert_array_equal(got, want)
    # Per-row temperature: greedy rows only where temperature is 0.
    t = jnp.where(jnp.arange(16) % 2 == 0, 0.0, 1.0)
    got = np.asarray(sample(jax.random.key(2), logits, t, 0, 1.0))
    np.testing.assert_array_equal(got[::2], want[::2])


def test_greedy_with_traced_temperature():
    logits = jax.random.normal(jax.random.key(0), (8, 30))
    fn = jax.jit(sample, static_argnames="top_k")
    got = fn(jax.random.key(1), logits, jnp.float32(0.0), 0, jnp.float32(1.0))
    np.testing.assert_array_equal(got, np.argmax(np.asarray(logits), axis=-1))


def test_top_k_never_leaves_top_k():
    logits = jax.random.normal(jax.random.key(0), (4, 64)) * 3
    top5 = np.argsort(-np.asarray(logits), axis=-1)[:, :5]
    keys = jax.random.split(jax.random.key(1), 500)
    draws = jax.vmap(lambda k: sample(k, logits, 1.5, 5, 1.0))(keys)  # [500, 4]
    for b in range(4):
        assert set(np.asarray(draws[:, b]).tolist()) <= set(top5[b].tolist())
    assert _kept(filter_logits(logits, 1.0, 5, 1.0)).sum(-1).tolist() == [5] * 4


@pytest.mark.parametrize(
    "top_p, want",
    [(0.5, [0]), (0.7, [0, 1]), (0.8, [0, 1]), (0.81, [0, 1, 2]), (1.0, [0, 1, 2, 3])],
)
def test_top_p_keeps_smallest_prefix_reaching_mass(top_p, want):
    # Shuffled vocabulary order, so the sort and the map back to vocabulary order are exercised.
    perm = np.array([2, 0, 3, 1])
    logits = np.log(PROBS)[perm][None]
    kept = np.flatnonzero(_kept(filter_logits(logits, 1.0, 0, top_p))[0])
    assert sorted(perm[kept].tolist()) == want


def test_top_p_keeps_top1_for_tiny_p_and_per_row_values():
    logits = jnp.log(_rows(PROBS, 3))
    kept = _kept(filter_logits(logits, 1.0, 0, jnp.array([1e-6, 0.7, 0.9])))
    assert kept.sum(-1).tolist() == [1, 2, 3]


def test_filter_order_temperature_then_top_k_then_top_p():
    # Temperature 0.5 sharpens [0.5, 0.3, 0.15, 0.05] to ~[0.68, 0.25, 0.06, 0.01]: top_p 0.6
    # then keeps {0} only (it keeps {0, 1} at temperature 1).
    logits = jnp.log(jnp.asarray(PROBS))[None]
    assert _kept(filter_logits(logits, 1.0, 0, 0.6))[0].tolist() == [True, True, False, False]
    assert _kept(filter_logits(logits, 0.5, 0, 0.6))[0].tolist() == [True, False, False, False]
    # top-k renormalises before top-p: of {0, 1}, p = [0.625, 0.375]; top_p 0.6 keeps {0}.
    assert _kept(filter_logits(logits, 1.0, 2, 0.6))[0].tolist() == [True, False, False, False]
    assert _kept(filter_logits(logits, 1.0, 3, 0.6))[0].tolist() == [True, True, False, False]


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 4, 1.0), (1.3, 5, 0.8)])
def test_frequencies_match_renormalised_filtered_distribution(temperature, top_k, top_p):
    logits = np.array([2.0, 1.5, 1.0, 0.3, 0.0, -0.5, -2.0], np.float32)
    z = logits / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p)
    keep = np.zeros(len(p), bool)
    keep[order[: top_k or len(p)]] = True
    q = np.where(keep, p, 0) / np.where(keep, p, 0).sum()
    mass_before = np.cumsum(q[order]) - q[order]
    if top_p < 1.0:
        keep[order[mass_before >= top_p]] = False
    expected = np.where(keep, q, 0) / np.where(keep, q, 0).sum()

    n = 40_000
    draws = np.asarray(sample(jax.random.key(3), _rows(logits, n), temperature, top_k, top_p))
    counts = np.bincount(draws, minlength=len(p))
    assert counts[~keep].sum() == 0
    chi2 = np.sum((counts[keep] - n * expected[keep]) ** 2 / (n * expected[keep]))
    assert chi2 < 30, (chi2, counts, n * expected)  # dof <= 6: p-value ~1e-4


def test_same_key_same_tokens_and_jit_matches_eager():
    logits = jax.random.normal(jax.random.key(0), (32, 100)) * 2
    key = jax.random.key(7)
    eager = sample(key, logits, 0.9, 20, 0.9)
    np.testing.assert_array_equal(eager, sample(key, logits, 0.9, 20, 0.9))
    jitted = jax.jit(sample, static_argnames="top_k")(key, logits, 0.9, 20, jnp.float32(0.9))
    np.testing.assert_array_equal(eager, jitted)
    assert not np.array_equal(eager, sample(jax.random.key(8), logits, 0.9, 20, 0.9))


def test_count_recent_reads_only_the_last_window_valid_entries():
    #                     0  1  2  3  4  5  6  7     valid up to history_len
    history = jnp.array([[5, 5, 1, 5, 2, 5, 5, 5], [5, 5, 5, 5, 5, 5, 5, 5]], jnp.int32)
    tokens = jnp.array([5, 5], jnp.int32)
    # Row 0: last 3 valid of [5 5 1 5 2] are [1 5 2] -> 1; row 1: history_len 2 -> [5 5] -> 2.
    got = count_recent(history, jnp.array([5, 2]), tokens, window=3)
    assert got.tolist() == [1, 2]
    assert count_recent(history, 0, tokens, window=3).tolist() == [0, 0]
    assert count_recent(history, 8, tokens, window=10).tolist() == [6, 8]


def _ras_case(batch: int = 400, vocab: int = 8, c: int = 3):
    # top_k = 1 makes the filtered set {c}; the unfiltered distribution is near uniform.
    logits = _rows(jnp.zeros(vocab).at[c].set(0.2), batch)
    return logits, dict(temperature=1.0, top_k=1, top_p=1.0, window=10, threshold=0.1)


def test_ras_resamples_unfiltered_when_filtered_token_repeats():
    c = 3
    logits, opts = _ras_case(c=c)
    history = jnp.full((logits.shape[0], 16), c, jnp.int32)
    key = jax.random.key(11)
    got = repetition_aware_sample(key, logits, history, 16, **opts)
    assert np.mean(np.asarray(got) != c) > 0.7
    # The documented key split: the unfiltered candidate uses fold_in(key, 1).
    want = sample(jax.random.fold_in(key, 1), logits, 1.0, 0, 1.0)
    np.testing.assert_array_equal(got, want)


def test_ras_equals_plain_filtered_sample_without_repeats():
    logits = jax.random.normal(jax.random.key(0), (64, 40)) * 2
    opts = dict(temperature=0.8, top_k=10, top_p=0.8, window=10, threshold=0.1)
    key = jax.random.key(5)
    plain = sample(key, logits, 0.8, 10, 0.8)
    full_of_plain = jnp.broadcast_to(plain[:, None], (64, 12)).astype(jnp.int32)
    # Empty history: the buffer's contents are ignored.
    empty = repetition_aware_sample(key, logits, full_of_plain, 0, **opts)
    np.testing.assert_array_equal(empty, plain)
    # Irrelevant history: tokens never drawn (outside the vocabulary).
    other = jnp.full((64, 12), 1000, jnp.int32)
    np.testing.assert_array_equal(repetition_aware_sample(key, logits, other, 12, **opts), plain)


def test_ras_threshold_is_inclusive():
    c = 3
    logits, opts = _ras_case(c=c)
    history = jnp.zeros((logits.shape[0], 10), jnp.int32).at[:, 9].set(c)  # one repeat in 10
    key = jax.random.key(2)
    at = repetition_aware_sample(key, logits, history, 10, **opts)  # 1/10 >= 0.1: resample
    assert np.mean(np.asarray(at) != c) > 0.7
    above = repetition_aware_sample(key, logits, history, 10, **{**opts, "threshold": 0.2})
    assert np.all(np.asarray(above) == c)


def test_sample_tokens_in_while_loop_matches_python_loop():
    batch, steps, vocab = 4, 12, 6
    # Logits that favour repeating: RAS must kick in along the way.
    table = jax.random.normal(jax.random.key(0), (steps, batch, vocab)) + jnp.eye(vocab)[2] * 3
    cfg = SamplingConfig(temperature=1.0, top_k=2, top_p=0.9, repetition_aware=True, ras_window=4)
    key = jax.random.key(9)

    def step(t, buf):
        tok = sample_tokens(jax.random.fold_in(key, t), table[t], buf, t, cfg)
        return buf.at[:, t].set(tok)

    @jax.jit
    def loop():
        def body(carry):
            t, buf = carry
            return t + 1, step(t, buf)

        init = (jnp.int32(0), jnp.zeros((batch, steps), jnp.int32))
        return jax.lax.while_loop(lambda c: c[0] < steps, body, init)[1]

    buf = jnp.zeros((batch, steps), jnp.int32)
    for t in range(steps):
        buf = step(t, buf)
    np.testing.assert_array_equal(loop(), buf)

    plain = dataclasses.replace(cfg, repetition_aware=False)
    plain_buf = jnp.zeros((batch, steps), jnp.int32)
    for t in range(steps):
        tok = sample_tokens(jax.random.fold_in(key, t), table[t], None, None, plain)
        plain_buf = plain_buf.at[:, t].set(tok)
    assert not np.array_equal(plain_buf, buf)  # RAS did resample somewhere


def test_sample_tokens_dispatch_and_config_is_static():
    logits = jax.random.normal(jax.random.key(0), (8, 20))
    key = jax.random.key(1)
    cfg = SamplingConfig(temperature=0.7, top_k=5, top_p=0.9)
    fn = jax.jit(functools.partial(sample_tokens, cfg=cfg))
    np.testing.assert_array_equal(fn(key, logits, None, None), sample(key, logits, 0.7, 5, 0.9))
    ras = dataclasses.replace(cfg, repetition_aware=True)
    with pytest.raises(ValueError, match="history"):
        sample_tokens(key, logits, None, None, ras)
    assert hash(cfg) != hash(ras)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=-0.1), "--temperature must be >= 0"),
        (dict(temperature=float("nan")), "--temperature"),
        (dict(top_p=0.0), r"--top-p must be in \(0, 1\]"),
        (dict(top_p=1.5), "--top-p"),
        (dict(top_k=-1), "--top-k must be an integer >= 0"),
        (dict(top_k=2.5), "--top-k"),
        (dict(ras_window=0), "--ras-window"),
        (dict(ras_threshold=-0.5), "--ras-threshold"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kwargs)


def test_config_defaults_are_valid_and_frozen():
    cfg = SamplingConfig()
    assert (cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_aware) == (1.0, 0, 1.0, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.top_k = 3
