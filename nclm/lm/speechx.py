"""SpeechX layouts as data: `[text | acoustic prompt] -> target codes` for every task.

The prefix region of the LM (the bidirectional part of `[prefix | audio]`, nclm.lm.layout) holds
one slot per element, each of one of three kinds:

    KIND_TEXT    a text id (BOS, phonemes, EOS)                 -> text_embed[id]
    KIND_FRAME   one codec frame, all Q levels of prefix codes   -> sum_q audio_embed[q, code_q]
    KIND_TOKEN   a task token, a row of task_embed (TOKENS)       -> task_embed[row]

so a prefix is `ids int32[Lp]`, `kind int8[Lp]` and `codes int[Q, Lp]` (codes 0 off frame slots;
ids hold the task row on token slots). The layouts (SpeechX's task table, REFERENCE.md section 6):

    task  prefix after [BOS, text, EOS]                      target           target_start
    tts   (none: the voice prompt is the target's start)     C(s)             0
    ns    <ns>, C(s+n)                                       C(s)             0
    sr    <sr>, C(s+n)                                       C(n)             0
    tse   C(enrol), <tse>, C(s1+s2)                          C(s1)            0
    cse   C(pre), <soe>, <mask>, <eoe>, C(post)              C(pre,edit,post) len(pre)
    nse   C(pre+n), <soe>, C(mid+n), <eoe>, C(post+n)        C((pre,edit,post)+n) len(pre)

Frames before `target_start` are the known start of the target: the AR decoder is fed them as
its prompt, the NAR and masked passes embed all their levels, and no objective puts loss on them
(for editing they are the unedited words before the span). TTS keeps VALL-E's random prompt.
NS, SR and TSE may go without text ([BOS, EOS]); the editing tasks always carry the full edited
transcript. Task row 0 is TTS (added to every BOS slot, as before), so a TTS prefix is exactly
the old text layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.struct
import jax
import numpy as np

from nclm.text.symbols import BOS_ID, EOS_ID

TASKS = ("tts", "ns", "sr", "tse", "cse", "nse")  # example task id = index (per-task metrics)
TOKENS = {"ns": 1, "sr": 2, "tse": 3, "soe": 4, "mask": 5, "eoe": 6}  # rows of task_embed
NUM_TOKEN_ROWS = 1 + len(TOKENS)  # row 0 = TTS
KIND_TEXT, KIND_FRAME, KIND_TOKEN = 0, 1, 2
SOURCE_TASKS = ("ns", "sr", "tse")  # the output has the input's length; text optional
EDIT_TASKS = ("cse", "nse")


@flax.struct.dataclass
class Prefix:
    """The non-text part of a batch's prefix: kind int32[B, Lp] and codes int32[B, Q, Lp]."""

    kind: jax.Array
    codes: jax.Array


@dataclass(frozen=True)
class Example:
    """One laid-out example (numpy): the prefix slots and the target codes."""

    task: int
    prefix: np.ndarray  # int32[Lp]
    kind: np.ndarray  # int8[Lp]
    prefix_codes: np.ndarray  # int32[Q, Lp]
    target: np.ndarray  # int32[Q, T]
    target_start: int


# the acoustic prompt of each task: ("frames", part name) or ("token", TOKENS name)
_SEGMENTS = {
    "tts": (),
    "ns": (("token", "ns"), ("frames", "mixture")),
    "sr": (("token", "sr"), ("frames", "mixture")),
    "tse": (("frames", "enrol"), ("token", "tse"), ("frames", "mixture")),
    "cse": (
        ("frames", "pre"),
        ("token", "soe"),
        ("token", "mask"),
        ("token", "eoe"),
        ("frames", "post"),
    ),
    "nse": (
        ("frames", "pre"),
        ("token", "soe"),
        ("frames", "mid"),
        ("token", "eoe"),
        ("frames", "post"),
    ),
}
_PARTS = {
    task: tuple(n for what, n in segs if what == "frames") for task, segs in _SEGMENTS.items()
}


def layout_example(
    task: str, text: np.ndarray | None, target: np.ndarray, num_codebooks: int, **parts
) -> Example:
    """Lays out one example of `task` (TASKS) from its text ids (no BOS/EOS; None: no text) and
    codes[Q, n] of its named parts (_PARTS: mixture, enrol, pre, mid, post)."""
    if task not in _PARTS:
        raise ValueError(f"task {task!r}: expected one of {TASKS}")
    want = set(_PARTS[task])
    if set(parts) != want:
        raise ValueError(f"task {task}: needs parts {sorted(want)}, got {sorted(parts)}")
    if text is None and task in EDIT_TASKS + ("tts",):
        raise ValueError(f"task {task}: needs the text")
    for name, codes in {"target": target, **parts}.items():
        if codes.ndim != 2 or codes.shape[0] != num_codebooks:
            raise ValueError(
                f"task {task}: {name} must be codes[{num_codebooks}, T], got {codes.shape}"
            )
    text = np.zeros(0, np.int32) if text is None else np.asarray(text, np.int32)
    ids = [np.array([BOS_ID]), text, np.array([EOS_ID])]
    kind = [np.full(len(text) + 2, KIND_TEXT)]
    codes = [np.zeros((num_codebooks, len(text) + 2), np.int32)]
    for what, name in _SEGMENTS[task]:
        if what == "token":
            ids.append(np.array([TOKENS[name]]))
            kind.append(np.array([KIND_TOKEN]))
            codes.append(np.zeros((num_codebooks, 1), np.int32))
        else:
            value = parts[name]
            ids.append(np.zeros(value.shape[1], np.int32))
            kind.append(np.full(value.shape[1], KIND_FRAME))
            codes.append(value.astype(np.int32))
    start = parts["pre"].shape[1] if task in EDIT_TASKS else 0
    if start >= target.shape[1]:
        raise ValueError(f"task {task}: the pre part ({start} frames) leaves no target frame")
    return Example(
        TASKS.index(task),
        np.concatenate(ids).astype(np.int32),
        np.concatenate(kind).astype(np.int8),
        np.concatenate(codes, axis=1),
        np.asarray(target, np.int32),
        int(start),
    )


def prefix_slots(task: str, text_len: int, frames: dict[str, int]) -> int:
    """len(layout_example(...).prefix) from the text length and each part's frame count, without
    the codes: [BOS, text, EOS], every frame part, one slot per task token."""
    if task not in _SEGMENTS:
        raise ValueError(f"task {task!r}: expected one of {TASKS}")
    return text_len + 2 + sum(1 if what == "token" else frames[n] for what, n in _SEGMENTS[task])


def stack_prefixes(examples: list[Example], num_slots: int) -> dict:
    """Batch arrays of the prefixes, right-padded to num_slots: text int32[B, Lp], text_len,
    prefix_kind int32[B, Lp], prefix_codes int32[B, Q, Lp]."""
    rows, num_q = len(examples), examples[0].prefix_codes.shape[0]
    text = np.zeros((rows, num_slots), np.int32)
    kind = np.zeros((rows, num_slots), np.int32)
    codes = np.zeros((rows, num_q, num_slots), np.int32)
    length = np.zeros(rows, np.int32)
    for b, ex in enumerate(examples):
        n = len(ex.prefix)
        if n > num_slots:
            raise ValueError(f"prefix of {n} slots does not fit {num_slots}")
        text[b, :n], kind[b, :n], codes[b, :, :n], length[b] = (
            ex.prefix,
            ex.kind,
            ex.prefix_codes,
            n,
        )
    return {"text": text, "text_len": length, "prefix_kind": kind, "prefix_codes": codes}
