"""Sequence layouts of the VALL-E objectives, as arrays (no model code).

Every sequence is `[text | audio]`: the text region holds Lt slots (BOS, phonemes, EOS, then
padding to the bucket) and the audio region Ta slots. Rotary positions run on without gaps:
text slot j sits at position j, audio slot a at `text_len + a`, so the padding between the two
regions is invisible as long as its keys are masked.

AR (level 1):   audio = [BOS, c_1 .. c_T, (pad)]; slot a predicts c_{a+1}, slot T predicts EOS.
                Text attends to text; audio attends to text and to earlier audio (causal).
NAR (level j):  audio = frames 0..T-1; frames before the prompt length P embed all Q levels,
                later frames embed levels < j; loss on level j of frames P..T-1. Everything
                attends to every real slot (bidirectional).
Masked (SoundStorm, level q): frames before P show all levels; after it levels < q are shown,
                a cosine-scheduled share of level q (in spans) and every level > q are MASK;
                loss on the masked level-q codes. Bidirectional.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nclm.nn.attention_mask import MaskSpec
from nclm.text.symbols import BOS_ID, EOS_ID


def positions(text_len: jax.Array, num_text: int, num_audio: int) -> jax.Array:
    """int32[B, Lt + Ta]: j for text slots, text_len + a for audio slot a."""
    text = jnp.broadcast_to(jnp.arange(num_text), (text_len.shape[0], num_text))
    audio = text_len[:, None] + jnp.arange(num_audio)[None]
    return jnp.concatenate([text, audio], axis=1).astype(jnp.int32)


def key_valid(text_len: jax.Array, audio_len: jax.Array, num_text: int, num_audio: int):
    """bool[B, Lt + Ta]: real text slots and the first audio_len audio slots."""
    text = jnp.arange(num_text)[None] < text_len[:, None]
    audio = jnp.arange(num_audio)[None] < audio_len[:, None]
    return jnp.concatenate([text, audio], axis=1)


def attention_mask(
    text_len: jax.Array, audio_len: jax.Array, num_text: int, num_audio: int, causal: bool
) -> jax.Array:
    """bool[B, L, L] (L = Lt + Ta), query by key. Causal: text sees real text; audio slot a sees
    real text and audio slots <= a. Bidirectional: every slot sees every real slot."""
    valid = key_valid(text_len, audio_len, num_text, num_audio)  # [B, L]
    mask = jnp.broadcast_to(valid[:, None, :], (valid.shape[0], valid.shape[1], valid.shape[1]))
    if not causal:
        return mask
    length = num_text + num_audio
    q, k = jnp.arange(length)[:, None], jnp.arange(length)[None]
    k_is_audio = k >= num_text
    allowed = ~k_is_audio | ((q >= num_text) & (k <= q))  # text keys always; audio keys causally
    return mask & allowed[None]


def mask_spec(text_len: jax.Array, audio_len: jax.Array, num_text: int, causal: bool) -> MaskSpec:
    """`attention_mask` as data (what the attention kernels take): the text slots are the prefix
    region, the audio slots the (causal or not) suffix."""
    return MaskSpec(text_len, audio_len, num_text, causal)


def cache_step_mask(text_len: jax.Array, num_text: int, last_row: jax.Array) -> MaskSpec:
    """The keys of a cached AR step writing cache row last_row[B]: the real text rows and the
    audio rows [num_text, last_row] (itself included); later rows are stale or unwritten."""
    return MaskSpec(text_len, last_row - num_text + 1, num_text, False)


def ar_audio(codes1: jax.Array, code_len: jax.Array, bos: int, eos: int, pad: int):
    """Level-1 codes[B, T] (T = the frame bucket, >= code_len + 1) -> (inputs, targets, weights),
    each [B, T]: inputs [BOS, c_1 .. c_{T-1}], targets [c_1 .. c_len, EOS, pad ..], weights 1 on
    slots 0..code_len."""
    t = jnp.arange(codes1.shape[1])[None]
    inputs = jnp.concatenate([jnp.full_like(codes1[:, :1], bos), codes1[:, :-1]], axis=1)
    inputs = jnp.where(t <= code_len[:, None], inputs, pad)
    targets = jnp.where(t < code_len[:, None], codes1, jnp.where(t == code_len[:, None], eos, pad))
    return inputs, targets, (t <= code_len[:, None]).astype(jnp.float32)


def nar_levels_visible(
    prompt_len: jax.Array, code_len: jax.Array, level: jax.Array, num_levels: int, num_frames: int
) -> jax.Array:
    """bool[B, Q, T]: which (level, frame) codes a NAR pass for `level` (1-based, >= 2) may embed.
    Prompt frames (t < prompt_len) show all levels; later real frames show levels < `level`."""
    t = jnp.arange(num_frames)[None, None]
    q = jnp.arange(num_levels)[None, :, None]  # 0-based level index
    real = t < code_len[:, None, None]
    prompt = t < prompt_len[:, None, None]
    return real & (prompt | (q < level - 1))


def nar_loss_weights(prompt_len: jax.Array, code_len: jax.Array, num_frames: int) -> jax.Array:
    """float32[B, T]: 1 on the frames a NAR pass predicts (prompt_len <= t < code_len)."""
    t = jnp.arange(num_frames)[None]
    return ((t >= prompt_len[:, None]) & (t < code_len[:, None])).astype(jnp.float32)


def sample_prompt_len(
    key: jax.Array, code_len: jax.Array, low: float = 0.15, high: float = 0.3, cap: int = 225
) -> jax.Array:
    """VALL-E's NAR prefix prompt: a random 15-30 % of each utterance, at most `cap` frames, and
    always leaving at least one frame to predict."""
    frac = jax.random.uniform(key, code_len.shape, minval=low, maxval=high)
    length = jnp.minimum(jnp.floor(frac * code_len).astype(jnp.int32), cap)
    return jnp.clip(length, 0, jnp.maximum(code_len - 1, 0))


def span_mask(key: jax.Array, ratio: jax.Array, eligible: jax.Array, span: int) -> jax.Array:
    """bool[B, T]: about `ratio[B]` of the `eligible[B, T]` frames, masked in spans of `span`
    frames on a fixed grid (MAGNeT's atomic spans; span 1 masks single frames). Each row masks
    round(ratio * eligible spans) whole spans, chosen uniformly, at least one when any exists.
    Spans are counted on the grid, so a span straddling the prompt boundary masks only its
    eligible frames."""
    num_frames = eligible.shape[1]
    num_spans = -(-num_frames // span)
    grid = jnp.arange(num_frames) // span  # [T] span index of each frame
    span_eligible = jnp.zeros((eligible.shape[0], num_spans), bool).at[:, grid].max(eligible)
    count = span_eligible.sum(-1)
    target = jnp.clip(jnp.round(ratio * count), jnp.minimum(count, 1), count).astype(jnp.int32)
    score = jnp.where(span_eligible, jax.random.uniform(key, span_eligible.shape), 2.0)
    rank = jnp.argsort(jnp.argsort(score, axis=-1), axis=-1)  # 0 = first chosen
    chosen = rank < target[:, None]  # [B, spans]
    return chosen[:, grid] & eligible


def masked_input(
    codes: jax.Array,  # int32[B, Q, T]
    level: jax.Array,  # 1-based scalar
    level_mask: jax.Array,  # bool[B, T]: level-`level` frames to hide
    prompt_len: jax.Array,  # int32[B]
    mask_id: int,
) -> jax.Array:
    """The masked model's input tokens [B, Q, T]: prompt frames keep every level; later frames
    keep levels < `level`, hide `level` where level_mask, and hide every level > `level`."""
    t = jnp.arange(codes.shape[2])[None, None]
    q = jnp.arange(codes.shape[1])[None, :, None] + 1
    after_prompt = t >= prompt_len[:, None, None]
    hidden = after_prompt & ((q > level) | ((q == level) & level_mask[:, None]))
    return jnp.where(hidden, mask_id, codes)


def drop_condition(
    drop: jax.Array,  # bool[B]
    text: jax.Array,  # int32[B, Lt]
    text_len: jax.Array,
    tokens: jax.Array,  # int32[B, Q, T]
    prompt_len: jax.Array,
    mask_id: int,
):
    """The null condition for classifier-free guidance, on rows where drop[B]: the text becomes
    [BOS, EOS] (text_len 2) and the prompt frames become MASK at every level. Returns
    (text, text_len, tokens)."""
    t = jnp.arange(tokens.shape[2])[None, None]
    in_prompt = t < prompt_len[:, None, None]
    tokens = jnp.where(drop[:, None, None] & in_prompt, mask_id, tokens)
    empty = jnp.zeros_like(text).at[:, 0].set(BOS_ID).at[:, 1].set(EOS_ID)
    text = jnp.where(drop[:, None], empty, text)
    return text, jnp.where(drop, 2, text_len), tokens


def drop_semantic(drop: jax.Array, semantic: jax.Array, null_id: int) -> jax.Array:
    """semantic[B, T] with every id of the rows where drop[B] replaced by the null id."""
    return jnp.where(drop[:, None], null_id, semantic)
