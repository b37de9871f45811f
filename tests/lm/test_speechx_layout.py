"""SpeechX layouts as data (nclm.lm.speechx): token positions, slot kinds, what the model embeds
at each slot, and which target frames carry loss under each objective, per task."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nclm.lm import config as C
from nclm.lm import speechx as sx
from nclm.lm.model import CodecLM, init_lm
from nclm.text.symbols import BOS_ID, EOS_ID
from nclm.train.lm_step import ar_outputs, nar_outputs, sample_masking, task_prompt_len

Q = 3
CFG = C.tiny(num_codebooks=Q, codebook_size=16, text_vocab_size=20)
TEXT = np.array([5, 6, 7], np.int32)


def _codes(n, seed):
    return np.random.default_rng(seed).integers(0, 16, (Q, n)).astype(np.int32)


def _example(task, text=TEXT):
    mix, enrol, pre, mid, post = (_codes(n, s) for n, s in ((5, 1), (3, 2), (2, 3), (2, 4), (2, 5)))
    parts = {
        "tts": {},
        "ns": {"mixture": mix},
        "sr": {"mixture": mix},
        "tse": {"enrol": enrol, "mixture": mix},
        "cse": {"pre": pre, "post": post},
        "nse": {"pre": pre, "mid": mid, "post": post},
    }[task]
    return sx.layout_example(task, text, _codes(6, 9), Q, **parts), parts


F, T, K = sx.KIND_FRAME, sx.KIND_TOKEN, sx.KIND_TEXT
EXPECTED = {  # after [BOS, 5, 6, 7, EOS]: (kind, what) per slot; frames named by part
    "tts": [],
    "ns": [(T, "ns")] + [(F, "mixture")] * 5,
    "sr": [(T, "sr")] + [(F, "mixture")] * 5,
    "tse": [(F, "enrol")] * 3 + [(T, "tse")] + [(F, "mixture")] * 5,
    "cse": [(F, "pre")] * 2 + [(T, "soe"), (T, "mask"), (T, "eoe")] + [(F, "post")] * 2,
    "nse": [(F, "pre")] * 2 + [(T, "soe")] + [(F, "mid")] * 2 + [(T, "eoe")] + [(F, "post")] * 2,
}


@pytest.mark.parametrize("task", sx.TASKS)
def test_layout_positions_and_kinds(task):
    ex, parts = _example(task)
    assert ex.task == sx.TASKS.index(task)
    np.testing.assert_array_equal(ex.prefix[:5], [BOS_ID, 5, 6, 7, EOS_ID])
    np.testing.assert_array_equal(ex.kind[:5], K)
    rest = EXPECTED[task]
    assert len(ex.prefix) == 5 + len(rest)
    seen: dict[str, int] = {}
    for slot, (kind, what) in enumerate(rest, start=5):
        assert ex.kind[slot] == kind, (task, slot)
        if kind == T:
            assert ex.prefix[slot] == sx.TOKENS[what]
            np.testing.assert_array_equal(ex.prefix_codes[:, slot], 0)
        else:  # every level of the part's next frame
            i = seen[what] = seen.get(what, -1) + 1
            np.testing.assert_array_equal(ex.prefix_codes[:, slot], parts[what][:, i])
    assert ex.target_start == (2 if task in sx.EDIT_TASKS else 0)


def test_layout_without_text_and_bad_parts():
    ex, _ = _example("ns", text=None)
    np.testing.assert_array_equal(ex.prefix[:3], [BOS_ID, EOS_ID, sx.TOKENS["ns"]])
    with pytest.raises(ValueError, match="needs the text"):
        _example("cse", text=None)
    with pytest.raises(ValueError, match=r"needs parts \['mixture'\]"):
        sx.layout_example("ns", TEXT, _codes(4, 0), Q)
    with pytest.raises(ValueError, match="mixture must be codes"):
        sx.layout_example("ns", TEXT, _codes(4, 0), Q, mixture=_codes(4, 0)[:2])


def _batch(tasks, num_slots=20, num_frames=8):
    exs = [_example(t)[0] for t in tasks]
    batch = sx.stack_prefixes(exs, num_slots)
    codes = np.zeros((len(exs), Q, num_frames), np.int32)
    for b, ex in enumerate(exs):
        codes[b, :, : ex.target.shape[1]] = ex.target
    batch.update(
        codes=codes,
        code_len=np.array([ex.target.shape[1] for ex in exs], np.int32),
        task=np.array([ex.task for ex in exs], np.int32),
        target_start=np.array([ex.target_start for ex in exs], np.int32),
    )
    return {k: jnp.asarray(v) for k, v in batch.items()}


def test_model_embeds_every_level_of_prompt_frames_and_token_rows():
    """Changing level Q of one mixture frame, or the task token, changes the AR logits; a TTS
    prefix (all text) embeds exactly as plain text with no prefix."""
    params = nn.meta.unbox(init_lm(CFG, jax.random.PRNGKey(0)))["params"]
    model = CodecLM(CFG)
    batch = _batch(["ns", "tts"])
    base, _, _ = ar_outputs(model, params, batch)
    deep = dict(batch, prefix_codes=batch["prefix_codes"].at[0, Q - 1, 7].add(1))
    assert np.abs(np.asarray(ar_outputs(model, params, deep)[0][0] - base[0])).max() > 1e-3
    sr = dict(batch, text=batch["text"].at[0, 5].set(sx.TOKENS["sr"]))
    assert np.abs(np.asarray(ar_outputs(model, params, sr)[0][0] - base[0])).max() > 1e-3
    plain = {k: v for k, v in batch.items() if not k.startswith("prefix")}
    np.testing.assert_array_equal(ar_outputs(model, params, plain)[0][1], base[1])


def test_loss_frames_per_layout():
    """AR: loss on target frames from target_start and the EOS slot; NAR/masked: the prompt is
    the target_start of SpeechX rows (pre frames of an edit), TTS keeps its sampled one."""
    params = nn.meta.unbox(init_lm(CFG, jax.random.PRNGKey(0)))["params"]
    model = CodecLM(CFG)
    tasks = list(sx.TASKS)
    batch = _batch(tasks)
    _, _, w = ar_outputs(model, params, batch)
    for b, task in enumerate(tasks):
        start = 2 if task in sx.EDIT_TASKS else 0
        np.testing.assert_array_equal(np.flatnonzero(w[b]), np.arange(start, 7), err_msg=task)
    sampled = jnp.full((len(tasks),), 4, jnp.int32)
    prompt = task_prompt_len(batch, sampled)
    np.testing.assert_array_equal(prompt, [4, 0, 0, 0, 2, 2])
    _, _, w = nar_outputs(model, params, batch, jnp.int32(2), prompt)
    np.testing.assert_array_equal(w.sum(1), [2, 6, 6, 6, 4, 4])
    objective = {"mask_span": 1, "cond_drop": 1.0}
    prompt_m, level_mask, drop = sample_masking(jax.random.PRNGKey(0), batch, objective)
    np.testing.assert_array_equal(prompt_m[1:], [0, 0, 0, 2, 2])
    np.testing.assert_array_equal(drop, [True] + [False] * 5)  # SpeechX rows keep their prompt
    assert not np.asarray(level_mask[4:, :2]).any()  # no loss on an edit's pre frames
