"""The objectives' layouts as arrays: AR inputs/targets, NAR visibility, SoundStorm masking (span
masks, hidden levels, the null condition)."""

import jax
import jax.numpy as jnp
import numpy as np

from nclm.lm import layout
from nclm.text.symbols import BOS_ID, EOS_ID

MASK = 99


def test_ar_audio_shifts_and_appends_eos():
    codes = jnp.asarray([[5, 6, 7, 0, 0]])
    inputs, targets, weights = layout.ar_audio(codes, jnp.asarray([3]), bos=20, eos=16, pad=23)
    np.testing.assert_array_equal(inputs, [[20, 5, 6, 7, 23]])
    np.testing.assert_array_equal(targets, [[5, 6, 7, 16, 23]])
    np.testing.assert_array_equal(weights, [[1, 1, 1, 1, 0]])


def test_span_mask_masks_whole_spans_of_eligible_frames_at_the_ratio():
    eligible = jnp.asarray(np.arange(24)[None] >= np.array([[3], [0]])) & (
        jnp.arange(24)[None] < jnp.asarray([[24], [20]])
    )
    for span in (1, 3):
        for ratio in (0.0, 0.3, 1.0):
            m = np.asarray(
                layout.span_mask(jax.random.PRNGKey(0), jnp.full(2, ratio), eligible, span)
            )
            assert not (m & ~np.asarray(eligible)).any()  # only eligible frames
            for b in range(2):
                spans = {t // span for t in np.flatnonzero(eligible[b])}
                chosen = {t // span for t in np.flatnonzero(m[b])}
                assert len(chosen) == max(1, round(ratio * len(spans)))  # at least one span
                for s in chosen:  # whole spans: every eligible frame of a chosen span
                    frames = [t for t in range(s * span, s * span + span) if eligible[b, t]]
                    assert all(m[b, t] for t in frames)


def test_masked_input_hides_level_q_where_masked_and_every_level_above():
    codes = jnp.arange(3 * 6).reshape(1, 3, 6)
    level_mask = jnp.asarray([[0, 0, 1, 0, 1, 1]], bool)
    out = np.asarray(layout.masked_input(codes, jnp.int32(2), level_mask, jnp.asarray([2]), MASK))
    np.testing.assert_array_equal(out[0, 0], np.arange(6))  # level 1 visible
    np.testing.assert_array_equal(out[0, 1], [6, 7, MASK, 9, MASK, MASK])  # level 2 as masked
    np.testing.assert_array_equal(out[0, 2], [12, 13, MASK, MASK, MASK, MASK])  # prompt kept


def test_drop_condition_is_bos_eos_and_a_masked_prompt():
    text = jnp.asarray([[1, 7, 8, 2, 0], [1, 9, 2, 0, 0]])
    tokens = jnp.ones((2, 2, 4), jnp.int32)
    drop = jnp.asarray([True, False])
    new_text, new_len, new_tokens = layout.drop_condition(
        drop, text, jnp.asarray([4, 3]), tokens, jnp.asarray([2, 2]), MASK
    )
    np.testing.assert_array_equal(new_text[0, :2], [BOS_ID, EOS_ID])
    np.testing.assert_array_equal(new_len, [2, 3])
    np.testing.assert_array_equal(new_text[1], text[1])
    assert (np.asarray(new_tokens[0, :, :2]) == MASK).all()
    assert (np.asarray(new_tokens[0, :, 2:]) == 1).all() and (np.asarray(new_tokens[1]) == 1).all()
