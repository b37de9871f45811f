"""Every attention implementation == the dense reference, for every mask kind of the codec LM:
the AR prefix-LM pass (text bidirectional, audio causal), the bidirectional NAR/masked pass, a
prefill into a longer cache and a cached one-query step; with padding in both regions and a fully
padded row (which outputs zeros everywhere).

Covered on the CPU: blockwise (block sizes that do and do not divide the lengths), TPU splash
attention in Pallas interpret mode, and the cuDNN path's argument translation (its calls to
jax.nn.dot_product_attention are recorded: packed keys, lengths and is_causal only, no dense
mask, and run through jax's xla implementation with those same arguments), gradients of the
blockwise and cuDNN-argument paths. Not covered: the cuDNN kernel itself (no GPU here; e.g. its
output for a length-1 row), splash compiled for a TPU, splash gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nclm.lm import layout
from nclm.nn import attention_fused
from nclm.nn.attention import attend, choose_implementation
from nclm.nn.attention_blockwise import blockwise_attention
from nclm.nn.attention_mask import MaskSpec

B, LT, TA, N, K, H = 3, 5, 9, 4, 2, 16  # grouped-query: 2 query heads per key/value head
TEXT_LEN = np.array([5, 2, 0])  # row 2: fully padded
AUDIO_LEN = np.array([9, 4, 0])


def _qkv(num_q, num_k, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, num_q, N, H))
    k, v = rng.normal(size=(2, B, num_k, K, H))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def _case(kind):
    """(q, k, v, spec) of one mask kind; the cache cases have more key rows than queries."""
    tl, al = jnp.asarray(TEXT_LEN, jnp.int32), jnp.asarray(AUDIO_LEN, jnp.int32)
    if kind == "cached_step":  # row b writes cache row LT + al[b] - 1 (row 2: nothing real)
        spec = layout.cache_step_mask(tl, LT, LT + al - 1)
        return (*_qkv(1, LT + TA + 3), spec)
    spec = layout.mask_spec(tl, al, LT, causal=kind != "bidirectional")
    num_k = LT + TA + (4 if kind == "prefill" else 0)
    return (*_qkv(LT + TA, num_k), spec)


KINDS = ["causal", "bidirectional", "prefill", "cached_step"]


def _dense(q, k, v, spec):
    """The reference, written out: float32 softmax over the dense mask, zero rows without keys."""
    mask = np.asarray(spec.dense(q.shape[1], k.shape[1]))[:, None]  # [B, 1, T, S]
    qg = np.asarray(q, np.float64).reshape(B, q.shape[1], K, N // K, H)
    logits = np.einsum("btkgh,bskh->bkgts", qg, np.asarray(k, np.float64)) / np.sqrt(H)
    logits = np.where(mask[:, :, None], logits, -np.inf)
    peak = np.max(logits, -1, keepdims=True)
    w = np.exp(logits - np.where(np.isfinite(peak), peak, 0))
    w = w / np.maximum(w.sum(-1, keepdims=True), 1e-300)
    out = np.einsum("bkgts,bskh->btkgh", w, np.asarray(v, np.float64))
    return out.reshape(q.shape)


def test_mask_spec_is_the_layouts_mask():
    """MaskSpec.dense == layout.attention_mask (causal and not), and the cached-step spec hides
    the text padding and every row past the written one."""
    tl, al = jnp.asarray(TEXT_LEN, jnp.int32), jnp.asarray(AUDIO_LEN, jnp.int32)
    for causal in (False, True):
        spec = layout.mask_spec(tl, al, LT, causal)
        want = layout.attention_mask(tl, al, LT, TA, causal)
        np.testing.assert_array_equal(spec.dense(LT + TA, LT + TA), want)
    write = np.array([LT + 3, LT, LT + 6])
    got = layout.cache_step_mask(tl, LT, jnp.asarray(write)).dense(1, 20)[:, 0]
    rows = np.arange(20)[None]
    want = (rows < TEXT_LEN[:, None]) | ((rows >= LT) & (rows <= write[:, None]))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", KINDS)
def test_xla_reference_matches_written_out_attention(kind):
    q, k, v, spec = _case(kind)
    np.testing.assert_allclose(attend(q, k, v, spec, "xla"), _dense(q, k, v, spec), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_blockwise_matches_dense(kind):
    """Block sizes 1 (every key its own block), 4 (the lengths are not multiples of it) and 64
    (one block); the fully padded row is zero."""
    q, k, v, spec = _case(kind)
    want = _dense(q, k, v, spec)
    for block in (1, 4, 64):
        got = jax.jit(blockwise_attention, static_argnums=(4, 5))(q, k, v, spec, block, block)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"block {block}")
    assert not np.asarray(got[2]).any()


def _grads(fn, q, k, v):
    r = jnp.asarray(np.random.default_rng(3).normal(size=q.shape), jnp.float32)
    return jax.jit(jax.grad(lambda q, k, v: (fn(q, k, v) * r).sum(), (0, 1, 2)))(q, k, v)


def test_gradients_match_dense():
    """Training runs through these paths: the blockwise loop's gradients and those of the cuDNN
    path's arguments (packed keys, lengths, is_causal; run by jax's xla implementation) are the
    dense reference's, padding and the fully padded row included."""
    q, k, v, spec = _case("causal")
    seen = spec.query_sees_any(q.shape[1])[:, :, None, None]
    want = _grads(lambda *x: attend(*x, spec, "xla"), q, k, v)
    block = _grads(lambda *x: blockwise_attention(*x, spec, 4, 4), q, k, v)
    lengths = _grads(
        lambda *x: jnp.where(seen, attention_fused.lengths_attention(*x, spec, "xla"), 0), q, k, v
    )
    for name, got in (("blockwise", block), ("lengths", lengths)):
        for g_got, g_want in zip(got, want, strict=True):
            np.testing.assert_allclose(g_got, g_want, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_cudnn_arguments_are_lengths_and_causal(kind, monkeypatch):
    """The cuDNN path passes no mask or bias, only packed keys, key lengths and is_causal; run
    with those same arguments by jax's xla implementation, it equals the dense reference."""
    calls = []
    real = jax.nn.dot_product_attention

    def record(q, k, v, bias=None, mask=None, **kw):
        assert bias is None and mask is None and "query_seq_lengths" not in kw
        assert kw.pop("implementation") == "cudnn" and q.dtype == jnp.bfloat16
        lengths = np.asarray(kw["key_value_seq_lengths"])
        calls.append((q.shape[1], k.shape[1], kw.get("is_causal", False), lengths))
        f32 = (x.astype(jnp.float32) for x in (q, k, v))
        return real(*f32, **kw, implementation="xla")

    monkeypatch.setattr(jax.nn, "dot_product_attention", record)
    q, k, v, spec = (*(x.astype(jnp.bfloat16) for x in _case(kind)[:3]), _case(kind)[3])
    got = attend(q, k, v, spec, "cudnn")
    want = _dense(*(x.astype(jnp.float32) for x in (q, k, v)), spec)
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=1e-2)  # a bf16 output
    t, s = q.shape[1], k.shape[1]
    real_keys = np.maximum(TEXT_LEN + AUDIO_LEN, 1)  # the cached step: audio rows written
    expected = [(t, s, kind in ("causal", "prefill"), real_keys)]
    if kind in ("causal", "prefill"):  # text queries: text keys only
        expected.append((LT, LT, False, np.maximum(TEXT_LEN, 1)))
    assert len(calls) == len(expected)
    for call, want_call in zip(calls, expected, strict=True):
        assert call[:3] == want_call[:3]
        np.testing.assert_array_equal(call[3], want_call[3])


def test_cudnn_needs_16_bit_compute():
    q, k, v, spec = _case("bidirectional")
    with pytest.raises(ValueError, match="attention='cudnn' needs bfloat16"):
        attention_fused.lengths_attention(q, k, v, spec, "cudnn")


@pytest.mark.parametrize("kind", ["causal", "bidirectional", "prefill"])
def test_splash_interpret_matches_dense(kind):
    """TPU splash attention (Pallas interpret mode off a TPU), 128-blocks: every length here is
    padded. The cached step is left out: with one query, `auto` never picks a kernel."""
    q, k, v, spec = _case(kind)
    got = jax.jit(lambda q, k, v: attend(q, k, v, spec, "splash"))(q, k, v)
    np.testing.assert_allclose(got, _dense(q, k, v, spec), atol=1e-5)


def test_auto_picks_by_platform_dtype_and_length():
    long, short = jnp.zeros((1, 600, 4, 64)), jnp.zeros((1, 100, 4, 64))
    step = jnp.zeros((1, 1, 4, 64), jnp.bfloat16)
    assert choose_implementation("auto", long.astype(jnp.bfloat16), "gpu") == "cudnn"
    assert choose_implementation("auto", long, "gpu") == "blockwise"  # float32: no cuDNN
    assert choose_implementation("auto", short, "tpu") == "splash"
    assert choose_implementation("auto", long, "cpu") == "blockwise"
    assert choose_implementation("auto", short, "cpu") == "xla"
    assert choose_implementation("auto", step, "gpu") == "xla"  # a cached step: [.., 1, L]
    assert choose_implementation("splash", short, "cpu") == "splash"
    with pytest.raises(ValueError, match="attention='flash'"):
        choose_implementation("flash", short)


def test_plain_lengths_spec():
    """MaskSpec.lengths: one run of real keys, no prefix region (causal or not)."""
    spec = MaskSpec.lengths(jnp.asarray([3, 0, 5], jnp.int32), causal=True)
    got = np.asarray(spec.dense(5, 5))
    rows, cols = np.arange(5)[:, None], np.arange(5)[None]
    for b, n in enumerate([3, 0, 5]):
        np.testing.assert_array_equal(got[b], (cols < n) & (cols <= rows))
