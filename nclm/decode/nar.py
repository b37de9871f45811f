"""NAR decoding of levels 2..Q: one bidirectional pass per level, greedy or sampled.

The audio frames of each row are packed as [prompt (P_b frames, all levels) | generated
(G_b frames, level 1 known)]; the pass for level j embeds every level of the prompt frames and
levels < j of the generated ones (the NAR training layout), and fills level j of the generated
frames. A `lax.fori_loop` runs the Q - 1 passes with the level as a traced value: one compiled
body whatever Q.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from nclm.decode.sampling import SamplingConfig, sample
from nclm.lm import layout
from nclm.lm.config import LMConfig
from nclm.lm.model import CodecLM
from nclm.lm.speechx import Prefix

GREEDY = SamplingConfig(temperature=0.0)  # VALL-E decodes the NAR levels greedily


def _place(buffer: jax.Array, rows: jax.Array, start: jax.Array) -> jax.Array:
    """buffer[B, Q, F] with rows[B, Q, G] written at frame start[B] of each row."""
    return jax.vmap(lambda b, r, s: jax.lax.dynamic_update_slice(b, r, (0, s)))(buffer, rows, start)


@partial(jax.jit, static_argnames=("cfg", "sampling", "dtype"))
def nar_generate(
    params: Any,
    text: jax.Array,  # int32[B, Lt]
    text_len: jax.Array,  # int32[B]
    prompt: jax.Array,  # int32[B, Q, P]: all levels of the voice prompt, right-padded
    prompt_len: jax.Array,  # int32[B]
    level1: jax.Array,  # int32[B, G]: generated level-1 codes (the AR output)
    gen_len: jax.Array,  # int32[B]
    key: jax.Array,
    task: jax.Array | None = None,
    prefix: Prefix | None = None,  # SpeechX prefix kinds/codes of `text` (nclm.lm.speechx)
    *,
    cfg: LMConfig,
    sampling: SamplingConfig = GREEDY,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """-> int32[B, Q, G]: all levels of the generated frames (0 past gen_len)."""
    model = CodecLM(cfg, dtype)
    batch, num_q = text.shape[0], cfg.num_codebooks
    num_prompt, num_gen = prompt.shape[2], level1.shape[1]
    task = jnp.zeros((batch,), jnp.int32) if task is None else task
    real = jnp.arange(num_gen)[None] < gen_len[:, None]
    gen = jnp.zeros((batch, num_q, num_gen), jnp.int32).at[:, 0].set(jnp.where(real, level1, 0))
    frames = jnp.zeros((batch, num_q, num_prompt + num_gen), jnp.int32)
    frames = _place(_place(frames, prompt, jnp.zeros_like(prompt_len)), gen, prompt_len)
    total = prompt_len + gen_len
    t = jnp.arange(frames.shape[2])[None]
    target = (t >= prompt_len[:, None]) & (t < total[:, None])

    def one_level(level, frames):  # level: traced int32, one compiled body for levels 2..Q
        visible = layout.nar_levels_visible(prompt_len, total, level, num_q, frames.shape[2])
        logits = model.apply(
            {"params": params},
            text,
            text_len,
            frames,
            total,
            visible,
            level,
            task,
            prefix,
            method=CodecLM.nar_logits,
        )  # [B, F, V]
        flat = logits.reshape(-1, logits.shape[-1])
        k = jax.random.fold_in(key, level)
        picked = sample(k, flat, sampling.temperature, sampling.top_k, sampling.top_p)
        picked = picked.reshape(batch, -1).astype(jnp.int32)
        current = jax.lax.dynamic_index_in_dim(frames, level - 1, axis=1, keepdims=False)
        row = jnp.where(target, picked, current)
        return jax.lax.dynamic_update_index_in_dim(frames, row, level - 1, axis=1)

    frames = jax.lax.fori_loop(2, num_q + 1, one_level, frames)
    out = jax.vmap(lambda f, s: jax.lax.dynamic_slice(f, (0, s), (num_q, num_gen)))(
        frames, prompt_len
    )
    return jnp.where(real[:, None], out, 0)
