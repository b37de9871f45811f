"""nclm.decode.nar: the single-body level loop (`lax.fori_loop` over a traced level) gives the
same sampled tokens as the unrolled Python loop over levels it replaced, and its program does
not grow with the number of levels."""

import dataclasses
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nclm.decode.nar import _place, nar_generate
from nclm.decode.sampling import SamplingConfig, sample
from nclm.lm import config as C
from nclm.lm import layout
from nclm.lm.model import CodecLM, for_decoding, init_lm

CFG = C.tiny(num_codebooks=4, codebook_size=16, text_vocab_size=20)
SAMPLED = SamplingConfig(temperature=1.0, top_k=6)


@partial(jax.jit, static_argnames=("cfg", "sampling"))
def _unrolled(params, text, text_len, prompt, prompt_len, level1, gen_len, key, *, cfg, sampling):
    """The decoder before issue 12: one Python-unrolled pass per level 2..Q."""
    model = CodecLM(cfg)
    batch, num_q = text.shape[0], cfg.num_codebooks
    num_prompt, num_gen = prompt.shape[2], level1.shape[1]
    task = jnp.zeros((batch,), jnp.int32)
    real = jnp.arange(num_gen)[None] < gen_len[:, None]
    gen = jnp.zeros((batch, num_q, num_gen), jnp.int32).at[:, 0].set(jnp.where(real, level1, 0))
    frames = jnp.zeros((batch, num_q, num_prompt + num_gen), jnp.int32)
    frames = _place(_place(frames, prompt, jnp.zeros_like(prompt_len)), gen, prompt_len)
    total = prompt_len + gen_len
    for level in range(2, num_q + 1):
        visible = layout.nar_levels_visible(
            prompt_len, total, jnp.int32(level), num_q, frames.shape[2]
        )
        logits = model.apply(
            {"params": params}, text, text_len, frames, total, visible, jnp.int32(level), task,
            method=CodecLM.nar_logits,
        )  # fmt: skip
        flat = logits.reshape(-1, logits.shape[-1])
        k = jax.random.fold_in(key, level)
        picked = sample(k, flat, sampling.temperature, sampling.top_k, sampling.top_p)
        picked = picked.reshape(batch, -1).astype(jnp.int32)
        t = jnp.arange(frames.shape[2])[None]
        target = (t >= prompt_len[:, None]) & (t < total[:, None])
        frames = frames.at[:, level - 1].set(jnp.where(target, picked, frames[:, level - 1]))
    out = jax.vmap(lambda f, s: jax.lax.dynamic_slice(f, (0, s), (num_q, num_gen)))(
        frames, prompt_len
    )
    return jnp.where(real[:, None], out, 0)


def _inputs(cfg, seed=3):
    rng = np.random.default_rng(seed)
    text = jnp.asarray(rng.integers(3, cfg.text_vocab_size, (2, 6)), jnp.int32)
    prompt = jnp.asarray(rng.integers(0, 16, (2, cfg.num_codebooks, 4)), jnp.int32)
    level1 = jnp.asarray(rng.integers(0, 16, (2, 5)), jnp.int32)
    lengths = [jnp.asarray(v, jnp.int32) for v in ([6, 4], [2, 4], [5, 3])]
    return text, lengths[0], prompt, lengths[1], level1, lengths[2]


def test_level_loop_equals_unrolled_levels_with_sampling():
    params = nn.meta.unbox(init_lm(CFG, jax.random.PRNGKey(0)))["params"]
    text, text_len, prompt, prompt_len, level1, gen_len = _inputs(CFG)
    key = jax.random.PRNGKey(5)
    args = (params, text, text_len, prompt, prompt_len, level1, gen_len, key)
    got = np.asarray(nar_generate(*args, cfg=CFG, sampling=SAMPLED))
    want = np.asarray(_unrolled(*args, cfg=CFG, sampling=SAMPLED))
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(got[:, 1:])) > 3  # sampled levels, not a constant


def test_decoding_form_gives_the_same_tokens():
    """`nclm tts` decodes with its weights in decoding form (unrolled, out_in kernels)."""
    params = nn.meta.unbox(init_lm(CFG, jax.random.PRNGKey(0)))["params"]
    args = (*_inputs(CFG), jax.random.PRNGKey(5))
    want = np.asarray(nar_generate(params, *args, cfg=CFG, sampling=SAMPLED))
    cfg, params = for_decoding(CFG, params)
    assert "layer_0" in params["backbone"]
    got = np.asarray(nar_generate(params, *args, cfg=cfg, sampling=SAMPLED))
    np.testing.assert_array_equal(got, want)


def test_program_does_not_grow_with_levels():
    """The lowered program holds one copy of the model whatever Q (the unrolled loop held Q-1)."""

    def dots(num_q):
        cfg = dataclasses.replace(CFG, num_codebooks=num_q)
        params = jax.eval_shape(lambda: nn.meta.unbox(init_lm(cfg, jax.random.PRNGKey(0))))
        text, text_len, prompt, prompt_len, level1, gen_len = _inputs(cfg)
        lowered = nar_generate.lower(
            params["params"], text, text_len, prompt, prompt_len, level1, gen_len,
            jax.random.PRNGKey(0), cfg=cfg,
        )  # fmt: skip
        return lowered.as_text().count("dot_general")

    assert dots(2) == dots(6) > 0
