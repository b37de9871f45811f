"""AR decoding of level-1 codes: one prefill pass, then a `lax.while_loop` over a preallocated KV
cache, for a batch of prompts of different lengths. One compiled program per shape bucket.

Buffer rows (per example b, P_b = prompt_len[b]):
    [0, Lt)                     text slots (BOS, phonemes, EOS, padding)
    Lt                          audio BOS
    Lt + 1 .. Lt + P_b          prompt codes
    Lt + P_b + 1 + k            generated code k (k = 0 .. max_new - 1)
Step k feeds generated code k - 1 into row Lt + P_b + k and samples code k from its output.
Rows past a row's own length hold stale prefill K/V (the prompt bucket is padded); the key mask
hides them until the step that overwrites them. Step k samples with `fold_in(key, k)`, so the
tokens depend on the key and the model only, not on the loop's structure.

The cache grows while rows are running (`cache_allowances`): it first holds room for about
max_new / 2^k new codes (at least `first_cache_frames`), and doubles (one copy) only if a row is
still running when that room is used up. A step's attention reads the whole buffer, so a buffer
sized for max_new up front would be read on every step: `nclm tts` allows 16 codes per text token
and speech ends near 6, so about 3 x the valid rows, up to half of a step's bytes at batch 8
(BENCHMARKS.md). Each phase is its own loop over its own buffer size in the same program (a
conditional skips the later ones once every row has ended), so a step never slices the cache.

The model runs in decoding form (nclm.lm.model.for_decoding): layers unrolled, every layer with its
weights and its KV cache `[B x K, L, H]` in buffers of its own, carried by the loop and written in
place, so a step reads each weight once and moves only the new cache row (scanned, each step
sliced every layer's weights and cache out of the stacked arrays: on the CPU, copies that cost
more than the step's own reads); projection kernels out_in, which a few rows read at full
bandwidth (nclm.nn.projection).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from nclm.decode.sampling import SamplingConfig, sample_tokens
from nclm.lm import layout
from nclm.lm.config import LMConfig
from nclm.lm.model import CodecLM, for_decoding
from nclm.lm.speechx import Prefix
from nclm.nn.attention import LayerCache
from nclm.nn.transformer import init_cache

DEFAULT_SAMPLING = SamplingConfig()  # temperature 1, no filtering (the VALL-E repo)
FIRST_CACHE_FRAMES = 256  # the first buffer's room for new codes is at least this (3.4 s at 75 Hz)


def cache_allowances(max_new: int, first_cache_frames: int = FIRST_CACHE_FRAMES) -> tuple[int, ...]:
    """New-code rows of the KV cache in each phase of a decode, ascending and ending at max_new:
    max_new halved (rounded up) while the half is at least first_cache_frames; 0 (or a max_new
    below 2 x first_cache_frames) allocates max_new rows at once. 960 -> (480, 960)."""
    sizes = [max_new]
    while first_cache_frames > 0 and sizes[0] >= 2 * first_cache_frames:
        sizes.insert(0, -(-sizes[0] // 2))
    return tuple(sizes)


@partial(jax.jit, static_argnames=("cfg", "max_new", "sampling", "dtype", "first_cache_frames"))
def ar_generate(
    params: Any,
    text: jax.Array,  # int32[B, Lt]: BOS, phonemes (prompt transcript + target text), EOS, pad
    text_len: jax.Array,  # int32[B]
    prompt: jax.Array,  # int32[B, P]: level-1 codes of the voice prompt, right-padded
    prompt_len: jax.Array,  # int32[B]
    key: jax.Array,
    task: jax.Array | None = None,  # int32[B], default 0 (TTS)
    prefix: Prefix | None = None,  # SpeechX prefix kinds/codes of `text` (nclm.lm.speechx)
    *,
    cfg: LMConfig,
    max_new: int,
    sampling: SamplingConfig = DEFAULT_SAMPLING,
    dtype: Any = jnp.float32,
    min_new: jax.Array | int = 0,
    budget: jax.Array | None = None,  # int32[B], default max_new
    first_cache_frames: int = FIRST_CACHE_FRAMES,
) -> tuple[jax.Array, jax.Array]:
    """-> (codes int32[B, max_new] padded with EOS, lengths int32[B]): level-1 codes generated
    after each prompt until EOS, `budget[b]` codes (each row its own limit) or `max_new`. EOS is
    not allowed before `min_new` codes (a minimum duration; benchmarks use it to time a fixed
    number of steps). The KV cache grows in phases from `first_cache_frames` (module docstring;
    0: all max_new rows from the start); the tokens are the same either way."""
    cfg, params = for_decoding(cfg, params)  # weights and caches read in place, at full pace
    model = CodecLM(cfg, dtype)
    batch, num_text, num_prompt = text.shape[0], text.shape[1], prompt.shape[1]
    task = jnp.zeros((batch,), jnp.int32) if task is None else task
    eos = cfg.eos_id
    allowances = cache_allowances(max_new, first_cache_frames)
    budget = jnp.full((batch,), max_new, jnp.int32) if budget is None else budget
    if budget.shape != (batch,):
        raise ValueError(f"ar_generate: budget of shape {budget.shape}, expected ({batch},)")
    size = num_text + 1 + num_prompt + allowances[0]
    cache = init_cache(cfg.stack(False), batch, size, dtype)
    audio_in = jnp.concatenate([jnp.full((batch, 1), cfg.bos_id, jnp.int32), prompt], axis=1)
    audio_in = jnp.where(jnp.arange(1 + num_prompt) <= prompt_len[:, None], audio_in, cfg.pad_id)
    variables = {"params": params}
    h, cache = model.apply(
        variables,
        text,
        text_len,
        audio_in,
        prompt_len + 1,
        task,
        cache,
        jnp.zeros((batch,), jnp.int32),
        prefix,
        method=CodecLM.ar_hidden,
    )
    last = jnp.take_along_axis(h, (num_text + prompt_len)[:, None, None], axis=1)[:, 0]
    logits = model.apply(variables, last[:, None], method=CodecLM.ar_project)[:, 0]
    history = jnp.full((batch, max_new), eos, jnp.int32)

    def draw(step, logits, history):
        logits = logits.at[:, eos].set(jnp.where(step < min_new, -jnp.inf, logits[:, eos]))
        tok = sample_tokens(
            jax.random.fold_in(key, step), logits, history, jnp.full((batch,), step), sampling
        )
        return jnp.where(step >= budget, eos, tok.astype(jnp.int32))

    tok = draw(0, logits, history)
    history = history.at[:, 0].set(tok)
    done = tok == eos

    def body(carry):
        step, tok, cache, history, done = carry
        write = num_text + prompt_len + step  # the row of generated code step - 1
        key_mask = layout.cache_step_mask(text_len, num_text, write)
        position = text_len + prompt_len + step
        logits, cache = model.apply(
            variables, tok, position, write, key_mask, cache, method=CodecLM.ar_step
        )
        new = jnp.where(done, eos, draw(step, logits, history))
        history = jax.lax.dynamic_update_slice(history, new[:, None], (0, step))
        return step + 1, new, cache, history, done | (new == eos)

    def decode(phase, carry):
        """Steps until every row has ended or the phase's buffer is full; then the next phase on
        a buffer grown by one copy, unless every row has ended. -> history."""
        limit = allowances[phase]
        carry = jax.lax.while_loop(lambda c: (c[0] < limit) & ~jnp.all(c[4]), body, carry)
        if phase + 1 == len(allowances):
            return carry[3]
        grow_by = ((0, 0), (0, allowances[phase + 1] - limit), (0, 0))  # rows of [B x K, L, H]

        def grow(carry):
            step, tok, cache, history, done = carry
            cache = tuple(LayerCache(jnp.pad(c.k, grow_by), jnp.pad(c.v, grow_by)) for c in cache)
            return decode(phase + 1, (step, tok, cache, history, done))

        return jax.lax.cond(jnp.all(carry[4]), lambda c: c[3], grow, carry)

    history = decode(0, (jnp.int32(1), tok, cache, history, done))
    is_eos = history == eos
    lengths = jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1), max_new)
    return history, lengths.astype(jnp.int32)
