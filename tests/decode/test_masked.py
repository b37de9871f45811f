"""nclm.decode.masked: the schedule helpers, pass counts, keys, prompt/padding invariants and the
two ends of classifier-free guidance (w = 0 == conditional, w = -1 == unconditional model).

One tiny random CodecLM, B = 2 rows of different prompt / text / generated lengths; every
decoding compile shares these shapes (about six compiles in all)."""

import dataclasses
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nclm.decode import masked as M
from nclm.lm import config as C
from nclm.lm import layout
from nclm.lm.model import for_decoding, init_lm

CFG = C.tiny(num_codebooks=3, codebook_size=16, text_vocab_size=20)
G = 8  # generated-frame bucket
SCHED = M.MaskedSchedule(
    iterations=(4, 2, 1), temperature=1.0, sample_temperature=1.0, guidance="none"
)


@pytest.fixture(scope="module")
def setup():
    params = nn.meta.unbox(init_lm(CFG, jax.random.PRNGKey(0)))["params"]
    rng = np.random.default_rng(0)
    text_len = np.array([6, 4], np.int32)
    text = np.zeros((2, 6), np.int32)
    for b, n in enumerate(text_len):
        text[b, :n] = rng.integers(3, CFG.text_vocab_size, n)
    prompt = rng.integers(0, CFG.codebook_size, (2, 3, 4)).astype(np.int32)
    inputs = dict(
        text=jnp.asarray(text),
        text_len=jnp.asarray(text_len),
        prompt=jnp.asarray(prompt),
        prompt_len=jnp.asarray([4, 2], jnp.int32),
        gen_len=jnp.asarray([8, 5], jnp.int32),
    )
    return params, inputs


def _gen(params, inputs, seed=1, schedule=SCHED, **kw):
    out, passes = M.masked_generate(
        params,
        **inputs,
        key=jax.random.PRNGKey(seed),
        cfg=CFG,
        num_frames=G,
        schedule=schedule,
        **kw,
    )
    return np.asarray(out), int(passes)


def _real(inputs):
    return np.arange(G)[None, None] < np.asarray(inputs["gen_len"])[:, None, None]


def test_schedule_validation_and_padding():
    assert M.MaskedSchedule().steps(4) == (16, 1, 1, 1)
    assert M.MaskedSchedule(iterations=[4, 2]).steps(3) == (4, 2, 2)
    hash(M.MaskedSchedule(iterations=[4, 2]))  # a list is stored as a tuple: static under jit
    with pytest.raises(ValueError, match="iterations"):
        M.MaskedSchedule(iterations=(4, 2, 1, 1)).steps(3)
    for bad in [
        dict(iterations=(4, 0)),
        dict(iterations=()),
        dict(temperature=-1.0),
        dict(sample_temperature=-0.5),
        dict(top_k=-1),
        dict(top_p=0.0),
        dict(span=0),
        dict(guidance="cfg"),
        dict(guidance_max=-1.5),
    ]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            M.MaskedSchedule(**bad)


def test_guidance_scales():
    up = M.MaskedSchedule(guidance="ramp_up", guidance_max=2.0)
    np.testing.assert_allclose(up.guidance_scales(5), [0, 0.5, 1, 1.5, 2])
    np.testing.assert_allclose(up.guidance_scales(1), [2])
    down = M.MaskedSchedule(guidance="ramp_down", guidance_max=9.0, guidance_min=0.0)
    p = np.cos(np.pi / 2 * np.linspace(0, 1, 4))
    np.testing.assert_allclose(down.guidance_scales(4), p * 9, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(M.MaskedSchedule(guidance="none").guidance_scales(3), [0, 0, 0])
    np.testing.assert_allclose(M.MaskedSchedule().guidance_scales(3), [0, 1, 2])  # default


def test_num_masked_follows_cosine_and_remask_picks_lowest():
    for total, n in [(8, 4), (5, 3), (16, 16), (3, 1), (0, 2)]:
        got = [int(M.num_masked(jnp.int32(total), i, n)) for i in range(n)]
        want = [int(np.floor(total * np.cos(np.pi / 2 * (i + 1) / n))) for i in range(n - 1)]
        assert got == want + [0], (total, n)
    score = jnp.asarray([[0.5, -1.0, 3.0, -2.0, 0.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    masked = jnp.asarray([[True, True, True, False, True], [False, True, True, True, False]])
    got = M.remask(score, masked, jnp.asarray([2, 1]))
    # row 0: -2.0 is fixed (not masked), so the two lowest masked are -1.0 and 0.0
    np.testing.assert_array_equal(got, [[0, 1, 0, 0, 1], [0, 1, 0, 0, 0]])


def test_estimate_frames():
    assert M.estimate_frames(150, 30, 20) == 100
    assert M.estimate_frames(10, 30, 1) == 1
    with pytest.raises(ValueError, match="estimate_frames"):
        M.estimate_frames(150, 0, 20)


def test_everything_given_changes_nothing(setup):
    params, inputs = setup
    given = np.random.default_rng(2).integers(0, CFG.codebook_size, (2, 3, G)).astype(np.int32)
    out, passes = _gen(params, inputs, given=jnp.asarray(given), start_level=CFG.num_codebooks + 1)
    assert passes == 0
    np.testing.assert_array_equal(out, np.where(_real(inputs), given, 0))
    with pytest.raises(ValueError, match="given"):
        _gen(params, inputs, start_level=2)


def test_passes_seeds_and_filled_levels(setup):
    params, inputs = setup
    out, passes = _gen(params, inputs, seed=1)
    assert passes == 4 + 2 + 1 and out.shape == (2, 3, G) and out.dtype == np.int32
    real = np.broadcast_to(_real(inputs), out.shape)
    assert np.all((out[real] >= 0) & (out[real] < CFG.codebook_size))  # no MASK left
    assert np.all(out[~real] == 0)
    np.testing.assert_array_equal(_gen(params, inputs, seed=1)[0], out)
    assert not np.array_equal(_gen(params, inputs, seed=2)[0], out)
    guided = dataclasses.replace(SCHED, guidance="ramp_up")
    assert _gen(params, inputs, schedule=guided)[1] == 7  # batch 2B is still one pass


def test_guidance_ends_are_the_conditional_and_unconditional_models(setup):
    params, inputs = setup
    plain = _gen(params, inputs)[0]
    cond = dataclasses.replace(SCHED, guidance="constant", guidance_max=0.0)  # w = 0
    np.testing.assert_array_equal(_gen(params, inputs, schedule=cond)[0], plain)

    text, text_len, prompt = layout.drop_condition(
        jnp.ones((2,), bool),
        inputs["text"],
        inputs["text_len"],
        inputs["prompt"],
        inputs["prompt_len"],
        CFG.mask_id,
    )
    dropped = dict(inputs, text=text, text_len=text_len, prompt=prompt)
    uncond_plain = _gen(params, dropped)[0]
    assert not np.array_equal(uncond_plain, plain)  # the condition matters, so the test bites
    uncond = dataclasses.replace(SCHED, guidance="constant", guidance_max=-1.0)  # w = -1
    np.testing.assert_array_equal(_gen(params, inputs, schedule=uncond)[0], uncond_plain)


def test_prompt_given_and_padding_untouched_and_cosine_counts(setup):
    """ar+masked: level 1 given, levels 2..3 decoded in spans of 2 frames. The packed frames keep
    the prompt, the given level and zeros past P_b + G_b; each level's masked span count after
    iteration i is floor(N0 cos(π/2 (i+1)/n)), ending at 0."""
    params, inputs = setup
    schedule = dataclasses.replace(SCHED, iterations=(1, 5, 3), span=2, guidance="ramp_down")
    given = np.random.default_rng(3).integers(0, CFG.codebook_size, (2, 1, G)).astype(np.int32)
    decode = jax.jit(
        partial(
            M.masked_decode,
            cfg=CFG,
            num_frames=G,
            schedule=schedule,
            start_level=2,
            dtype=jnp.float32,
        )
    )
    gen, frames, passes, counts = decode(
        params, **inputs, key=jax.random.PRNGKey(4), task=None, given=jnp.asarray(given)
    )
    gen, frames = np.asarray(gen), np.asarray(frames)
    assert int(passes) == 5 + 3
    p_len, g_len = np.asarray(inputs["prompt_len"]), np.asarray(inputs["gen_len"])
    prompt = np.asarray(inputs["prompt"])
    for b in range(2):
        p, g = p_len[b], g_len[b]
        np.testing.assert_array_equal(frames[b, :, :p], prompt[b, :, :p])
        np.testing.assert_array_equal(frames[b, :, p : p + G], gen[b])
        assert np.all(frames[b, :, p + g :] == 0)
        np.testing.assert_array_equal(gen[b, 0, :g], given[b, 0, :g])
        assert np.all((gen[b, :, :g] >= 0) & (gen[b, :, :g] < CFG.codebook_size))
    for c, n in zip(counts, (5, 3)):
        num_spans = -(-g_len // 2)
        want = [
            [int(np.floor(s * np.cos(np.pi / 2 * (i + 1) / n))) for s in num_spans]
            for i in range(n)
        ]
        want[-1] = [0, 0]
        np.testing.assert_array_equal(np.asarray(c), want)


def test_semantic_condition_changes_the_output_and_guidance_drops_it():
    """A model with semantic ids (SoundStorm's condition): decoding reads them, and the guidance's
    unconditional half uses the null id (w = -1 equals decoding with every id null)."""
    cfg = dataclasses.replace(CFG, semantic_vocab_size=10)
    params = nn.meta.unbox(init_lm(cfg, jax.random.PRNGKey(0)))["params"]
    assert params["semantic_embed"].shape == (11, cfg.width)
    rng = np.random.default_rng(9)
    b, p = 2, 4
    text = jnp.asarray(rng.integers(3, 20, (b, 6)), jnp.int32)
    args = (
        params,
        text,
        jnp.asarray([6, 4]),
        jnp.asarray(rng.integers(0, 16, (b, 3, p)), jnp.int32),
        jnp.asarray([4, 2]),
        jnp.asarray([G, G - 2]),
        jax.random.PRNGKey(3),
    )
    sem = (jnp.asarray(rng.integers(0, 10, (b, p))), jnp.asarray(rng.integers(0, 10, (b, G))))
    null = tuple(jnp.full_like(s, 10) for s in sem)
    plain = dataclasses.replace(SCHED, sample_temperature=0.0, temperature=0.0)

    def run(semantic, schedule):
        return np.asarray(
            M.masked_generate(*args, semantic=semantic, cfg=cfg, num_frames=G, schedule=schedule)[0]
        )

    with_sem, without = run(sem, plain), run(null, plain)
    assert not np.array_equal(with_sem, without)
    uncond = dataclasses.replace(plain, guidance="constant", guidance_max=-1.0)
    text0, len0, prompt0 = layout.drop_condition(
        jnp.ones(b, bool), args[1], args[2], args[3], args[4], cfg.mask_id
    )
    dropped = np.asarray(
        M.masked_generate(
            args[0],
            text0,
            len0,
            prompt0,
            *args[4:],
            semantic=null,
            cfg=cfg,
            num_frames=G,
            schedule=plain,
        )[0]
    )
    np.testing.assert_array_equal(run(sem, uncond), dropped)


# Tokens of the unrolled per-level decoder this module's single scan replaced (issue 12), computed
# from that code on these inputs before the change: the scan over (level, iteration) pairs with a
# traced level must reproduce them with the same keys.
PINNED_PLAIN = [
    [[1, 10, 10, 10, 1, 10, 10, 10], [13, 9, 13, 13, 13, 13, 13, 9], [14] * 8],
    [[10, 10, 12, 4, 10, 0, 0, 0], [9, 9, 13, 13, 13, 0, 0, 0], [14, 14, 14, 4, 14, 0, 0, 0]],
]
PINNED_GUIDED = [
    [[12, 1, 2, 3, 2, 12, 13, 9], [9, 9, 7, 7, 14, 11, 7, 9], [11, 2, 2, 2, 2, 2, 2, 11]],
    [[0, 1, 5, 6, 9, 0, 0, 0], [14, 13, 13, 12, 12, 0, 0, 0], [5, 5, 14, 2, 2, 0, 0, 0]],
]


def test_single_scan_gives_the_unrolled_levels_tokens(setup):
    params, inputs = setup
    out, passes = _gen(params, inputs, seed=1)
    assert passes == 7
    np.testing.assert_array_equal(out, PINNED_PLAIN)
    schedule = dataclasses.replace(SCHED, iterations=(1, 5, 3), span=2, guidance="ramp_up", top_k=5)
    given = np.random.default_rng(3).integers(0, CFG.codebook_size, (2, 1, G)).astype(np.int32)
    out, passes = _gen(
        params, inputs, seed=4, schedule=schedule, given=jnp.asarray(given), start_level=2
    )
    assert passes == 8
    np.testing.assert_array_equal(out, PINNED_GUIDED)


def test_decoding_form_gives_the_same_tokens(setup):
    """`nclm tts` decodes with its weights in decoding form (unrolled, out_in kernels)."""
    params, inputs = setup
    cfg, params = for_decoding(CFG, params)
    assert "layer_0" in params["backbone"]
    out, passes = M.masked_generate(
        params, **inputs, key=jax.random.PRNGKey(1), cfg=cfg, num_frames=G, schedule=SCHED
    )
    np.testing.assert_array_equal(out, PINNED_PLAIN)
