"""Masked iterative decoding (SoundStorm / MaskGIT / MAGNeT) of any codebook levels.

Each row's frames are packed as [prompt (P_b frames, all levels) | generated (G_b = gen_len[b])]
in a buffer of P + G frames (G = `num_frames`, the static generated-frame bucket). Levels
1..start_level-1 of the generated frames come from `given` (e.g. AR level-1 codes); every other
generated entry starts as MASK. Levels q = start_level..Q are filled coarse to fine; level q runs
n = iterations[q-1] iterations, and one `lax.scan` runs every (level, iteration) pair in order
with the level as a traced value (one compiled body whatever Q). Generated frames are
grouped in spans of `span` frames on a grid starting at the first generated frame (span 1: single
frames); N0 = ceil(G_b / span) spans, all masked at the start of the level. Iteration i = 0..n-1:

    ℓ      = masked_logits(frames, level q)                         [B, T, V] (one forward pass)
    ℓ      = (1 + w_i) ℓ_c - w_i ℓ_u     with guidance (batch 2B; ℓ_u from drop_condition)
    x      ~ filter(ℓ / τ_i, top_k, top_p)  at the masked frames     τ_i = τ_s (n-1-i)/n (MAGNeT)
    c      = log softmax(ℓ)[x]              guided confidence, no temperature (MaskGIT)
    s_span = max over the span's masked frames of c   (+inf for spans already fixed)
    m_i    = floor(N0 cos(π/2 (i+1)/n))     spans left masked after i; m_{n-1} = 0
    re-mask the m_i spans of lowest s_span + τ0 (1 - (i+1)/n) g,   g ~ Gumbel

Guidance convention (Ho & Salimans' w): ℓ = ℓ_c + w (ℓ_c − ℓ_u), computed (1 + w) ℓ_c − w ℓ_u so
both ends are exact: w = 0 is the plain conditional model, w = −1 the unconditional one (text
[BOS, EOS], prompt frames MASK: `nclm.lm.layout.drop_condition`, the training objective's null
condition); w > 0 pushes away from the unconditional model. The seed paper (002) anneals w from 0
to 2. MAGNeT's λ (ℓ_u + λ (ℓ_c − ℓ_u), 10 -> 1) is w = λ − 1 (9 -> 0). Schedules over a level's
n iterations (n = 1: the value at i = 0, except ramp_up which gives w_max):
    constant:   w_i = w_max
    ramp_up:    w_i = w_max · i/(n-1)                                 0 -> w_max  (the default)
    ramp_down:  w_i = p_i w_max + (1 - p_i) w_min,  p_i = cos(π/2 · i/(n-1))   (MAGNeT)
The sampling temperature reaches 0 (greedy) at a level's last iteration, so n = 1 levels are
greedy as in SoundStorm. Keys: iteration i of level q uses fold_in(fold_in(key, q), i). Prompt
frames and frames past P_b + G_b are never written. One forward pass per iteration (guidance is
one pass of batch 2B): SoundStorm's default (16, 1, 1, ...) costs 16 + Q - 1 passes.
"""

from __future__ import annotations

import dataclasses
from functools import partial, wraps
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nclm.decode.nar import _place
from nclm.decode.sampling import sample
from nclm.lm import layout
from nclm.lm.config import LMConfig
from nclm.lm.model import CodecLM
from nclm.lm.speechx import Prefix

GUIDANCE = ("none", "constant", "ramp_up", "ramp_down")


@dataclasses.dataclass(frozen=True)
class MaskedSchedule:
    """How masked decoding iterates. Hashable: a static argument of `jax.jit`.

    `iterations[q-1]` is level q's iteration count; a tuple shorter than Q is padded with its last
    entry (the default (16, 1): 16 for level 1, 1 for every other level), a longer one is an error
    at decode time."""

    iterations: tuple[int, ...] = (16, 1)
    temperature: float = 1.0  # τ0 of the Gumbel choice noise (MaskGIT), annealed to 0
    sample_temperature: float = 1.0  # token sampling τ_s, annealed to 0 per level; 0 = greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    span: int = 1  # frames per re-masked span (MAGNeT: 3)
    guidance: str = "ramp_up"  # one of GUIDANCE; "none" skips the doubled batch
    guidance_max: float = 2.0  # w (module docstring): 0 = conditional, -1 = unconditional
    guidance_min: float = 0.0  # ramp_down's floor

    def __post_init__(self):
        its = self.iterations
        its = (its,) if isinstance(its, int) else tuple(its)
        object.__setattr__(self, "iterations", its)  # a list would not hash
        if not its or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in its):
            raise ValueError(f"masked iterations must be integers >= 1 per level, got {its!r}")
        if not self.temperature >= 0:
            raise ValueError(
                f"masked temperature (choice noise) must be >= 0, got {self.temperature}"
            )
        if not self.sample_temperature >= 0:
            raise ValueError(
                f"masked sample_temperature must be >= 0 (0 = greedy), "
                f"got {self.sample_temperature}"
            )
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"masked top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"masked top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if isinstance(self.span, bool) or not isinstance(self.span, int) or self.span < 1:
            raise ValueError(f"masked span must be an integer >= 1, got {self.span!r}")
        if self.guidance not in GUIDANCE:
            raise ValueError(f"masked guidance={self.guidance!r}: expected one of {GUIDANCE}")
        if not (self.guidance_max >= -1 and self.guidance_min >= -1):
            raise ValueError(
                f"masked guidance_max/guidance_min must be >= -1 (-1 = unconditional), got "
                f"{self.guidance_max}/{self.guidance_min}"
            )

    def steps(self, num_levels: int) -> tuple[int, ...]:
        """Iterations of levels 1..num_levels."""
        its = self.iterations
        if len(its) > num_levels:
            raise ValueError(
                f"masked iterations {its} has {len(its)} entries for {num_levels} codebook levels"
            )
        return its + its[-1:] * (num_levels - len(its))

    def guidance_scales(self, n: int) -> np.ndarray:
        """float32[n]: w_i for a level of n iterations (module docstring)."""
        i = np.arange(n, dtype=np.float64)
        frac = i / (n - 1) if n > 1 else np.zeros(1)
        if self.guidance == "ramp_up":
            lam = self.guidance_max * (frac if n > 1 else np.ones(1))
        elif self.guidance == "ramp_down":
            p = np.cos(np.pi / 2 * frac)
            lam = p * self.guidance_max + (1 - p) * self.guidance_min
        else:
            lam = np.full(n, self.guidance_max if self.guidance == "constant" else 0.0)
        return lam.astype(np.float32)


def num_masked(total: jax.Array, step: jax.Array, num_steps: int) -> jax.Array:
    """int32: how many of `total` units stay masked after iteration `step` (0-based) of
    `num_steps`: floor(total · cos(π/2 (step+1)/num_steps)), exactly 0 after the last one."""
    ratio = np.cos(np.pi / 2 * np.arange(1, num_steps + 1) / num_steps)
    ratio[-1] = 0.0  # cos(π/2) is 6e-17, not 0
    r = jnp.asarray(ratio, jnp.float32)[step]
    return jnp.floor(jnp.asarray(total, jnp.float32) * r).astype(jnp.int32)


def remask(score: jax.Array, masked: jax.Array, count: jax.Array) -> jax.Array:
    """bool[B, S]: the count[B] lowest-scoring of the `masked` [B, S] units (ties by index).
    Units not masked never qualify; count must not exceed the masked units of its row."""
    score = jnp.where(masked, score, jnp.inf)
    rank = jnp.argsort(jnp.argsort(score, axis=-1, stable=True), axis=-1)
    return masked & (rank < count[:, None])


def estimate_frames(prompt_frames: int, prompt_tokens: int, target_tokens: int) -> int:
    """Generated length for text-conditioned masked TTS when none is given: the prompt's speaking
    rate (frames per text token) times the target's text tokens, rounded, at least 1."""
    if prompt_tokens < 1 or prompt_frames < 1:
        raise ValueError(
            f"estimate_frames needs a prompt with audio and text, got {prompt_frames} frames and "
            f"{prompt_tokens} text tokens"
        )
    return max(1, round(prompt_frames / prompt_tokens * max(target_tokens, 0)))


def _pairs(cond: jax.Array, uncond: jax.Array) -> jax.Array:
    """[2B, ...]: rows c_0, u_0, c_1, u_1, ...; a batch split over devices keeps each row's two
    halves on its device (a plain concatenation would move them across devices every pass)."""
    return jnp.stack([cond, uncond], axis=1).reshape(-1, *cond.shape[1:])


def _guided_logits(model, params, ctx, frames, level, lam, guided: bool) -> jax.Array:
    """float32[B, T, V]: (1 + w) ℓ_c - w ℓ_u from one pass of batch 2B, or ℓ_c without guidance."""
    text, text_len, prompt_len, gen_len, task, semantic, prefix = ctx

    def run(text, text_len, frames, total, task, semantic, prefix):
        return model.apply(
            {"params": params},
            text,
            text_len,
            frames,
            total,
            jnp.int32(level),
            task,
            semantic,
            prefix,
            method=CodecLM.masked_logits,
        )

    total = prompt_len + gen_len
    if not guided:
        return run(text, text_len, frames, total, task, semantic, prefix)
    drop = jnp.ones_like(prompt_len, bool)
    null = layout.drop_condition(drop, text, text_len, frames, prompt_len, model.cfg.mask_id)
    both_semantic = None
    if semantic is not None:  # the null condition drops the semantic ids too
        null_semantic = layout.drop_semantic(drop, semantic, model.cfg.semantic_null_id)
        both_semantic = _pairs(semantic, null_semantic)
    both = run(
        *(_pairs(c, u) for c, u in zip((text, text_len, frames), null)),
        _pairs(total, total),
        _pairs(task, task),
        both_semantic,
        None if prefix is None else jax.tree.map(lambda x: _pairs(x, x), prefix),
    )
    both = both.reshape(-1, 2, *both.shape[1:])
    cond, uncond = both[:, 0], both[:, 1]
    return (1 + lam) * cond - lam * uncond  # exact at w = 0 and w = -1


def _schedule_tables(schedule: MaskedSchedule, steps: tuple[int, ...], start_level: int) -> dict:
    """Per-iteration scalars of every (level, iteration) pair, levels start_level..Q in order:
    level, iteration i, first (i == 0), guidance w_i, sampling τ_i, choice noise τ0 (1 - (i+1)/n)
    and the cosine ratio of spans left masked after i (module docstring). One `lax.scan` runs
    them all with a single compiled body."""
    cols = {k: [] for k in ("level", "it", "first", "lam", "temp", "noise", "ratio")}
    for level in range(start_level, len(steps) + 1):
        n = steps[level - 1]
        done = np.arange(1, n + 1) / n
        ratio = np.cos(np.pi / 2 * done)
        ratio[-1] = 0.0  # cos(π/2) is 6e-17, not 0
        cols["level"].append(np.full(n, level))
        cols["it"].append(np.arange(n))
        cols["first"].append(np.arange(n) == 0)
        cols["lam"].append(schedule.guidance_scales(n))
        cols["temp"].append(schedule.sample_temperature * (1 - done))  # (n-1-i)/n
        cols["noise"].append(schedule.temperature * (1 - done))
        cols["ratio"].append(ratio)
    dtypes = {"level": np.int32, "it": np.int32, "first": bool}
    return {
        k: jnp.asarray(np.concatenate(v) if v else np.zeros(0), dtypes.get(k, np.float32))
        for k, v in cols.items()
    }


def _decode_levels(model, params, ctx, base, gen, key, schedule, tables):
    """Fill levels start_level..Q of gen[B, Q, G] (module docstring): one `lax.scan` over every
    (level, iteration) pair of `tables`, the level a traced value, so the model is compiled
    once whatever Q. Returns (gen, passes, int32[K, B] spans still masked after each of the K
    iterations)."""
    _, _, prompt_len, gen_len, _, _, _ = ctx
    batch, _, num_gen = gen.shape
    span, vocab = schedule.span, model.cfg.codebook_size
    num_spans = -(-num_gen // span)
    grid = jnp.arange(num_gen) // span  # [G] span of each generated frame
    real = jnp.arange(num_gen)[None] < gen_len[:, None]  # [B, G]
    span_real = jnp.arange(num_spans)[None] * span < gen_len[:, None]  # [B, S]
    num_real = span_real.sum(-1)
    guided = schedule.guidance != "none"

    def body(carry, t):
        gen, masked, passes = carry
        level = t["level"]
        masked = jnp.where(t["first"], span_real, masked)  # a new level: every span masked
        frames = _place(base, gen, prompt_len)
        logits = _guided_logits(model, params, ctx, frames, level, t["lam"], guided)
        logits = jax.vmap(lambda x, s: jax.lax.dynamic_slice_in_dim(x, s, num_gen))(
            logits, prompt_len
        )  # [B, G, V]: the generated frames
        keys = jax.random.fold_in(jax.random.fold_in(key, level), t["it"])
        k_tok, k_noise = jax.random.split(keys)
        flat = logits.reshape(-1, vocab)
        tok = sample(k_tok, flat, t["temp"], schedule.top_k, schedule.top_p).reshape(batch, -1)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tok[..., None], -1)[..., 0]
        open_ = masked[:, grid] & real  # [B, G]
        current = jax.lax.dynamic_index_in_dim(gen, level - 1, axis=1, keepdims=False)
        row = jnp.where(open_, tok, current)
        conf = jnp.where(open_, logp, -jnp.inf)  # a span scores its most confident frame
        conf = jnp.pad(conf, ((0, 0), (0, num_spans * span - num_gen)), constant_values=-jnp.inf)
        conf = conf.reshape(batch, num_spans, span).max(-1)
        score = conf + t["noise"] * jax.random.gumbel(k_noise, conf.shape)
        count = jnp.floor(num_real.astype(jnp.float32) * t["ratio"]).astype(jnp.int32)
        masked = remask(score, masked, count)
        row = jnp.where(masked[:, grid], model.cfg.mask_id, row)
        gen = jax.lax.dynamic_update_index_in_dim(gen, jnp.where(real, row, 0), level - 1, 1)
        return (gen, masked, passes + 1), masked.sum(-1).astype(jnp.int32)

    carry = (gen, span_real, jnp.int32(0))
    (gen, _, passes), counts = jax.lax.scan(body, carry, tables)
    return gen, passes, counts


def masked_decode(
    params: Any,
    text: jax.Array,  # int32[B, Lt]
    text_len: jax.Array,  # int32[B]
    prompt: jax.Array,  # int32[B, Q, P]: all levels of the voice prompt, right-padded
    prompt_len: jax.Array,  # int32[B]
    gen_len: jax.Array,  # int32[B], clipped to num_frames
    key: jax.Array,
    task: jax.Array | None = None,  # int32[B], default 0 (TTS)
    given: jax.Array | None = None,  # int32[B, Q', G]: levels 1..start_level-1 (Q' >= those)
    semantic: tuple[jax.Array, jax.Array] | None = None,  # (int32[B, P], int32[B, G]) ids
    prefix: Prefix | None = None,  # SpeechX prefix kinds/codes of `text` (nclm.lm.speechx)
    *,
    cfg: LMConfig,
    num_frames: int,
    schedule: MaskedSchedule = MaskedSchedule(),
    start_level: int = 1,
    dtype: Any = jnp.float32,
) -> tuple[jax.Array, jax.Array, jax.Array, tuple[jax.Array, ...]]:
    """-> (codes int32[B, Q, G] of the generated frames, 0 past gen_len; the packed frames
    int32[B, Q, P + G]; forward passes int32; counts: counts[k] int32[n, B] are the spans left
    masked after each iteration of level start_level+k). Not jitted: `masked_generate` is."""
    num_q = cfg.num_codebooks
    steps = schedule.steps(num_q)
    if not 1 <= start_level <= num_q + 1:
        raise ValueError(f"masked start_level must be in 1..{num_q + 1}, got {start_level}")
    if start_level > 1 and (
        given is None or given.shape[1] < start_level - 1 or given.shape[2] != num_frames
    ):
        shape = None if given is None else tuple(given.shape)
        raise ValueError(
            f"masked start_level={start_level} needs given int32[B, >= {start_level - 1}, "
            f"{num_frames}] (levels 1..{start_level - 1}), got {shape}"
        )
    model = CodecLM(cfg, dtype)
    batch, num_prompt = text.shape[0], prompt.shape[2]
    task = jnp.zeros((batch,), jnp.int32) if task is None else task
    prompt_len = jnp.clip(prompt_len, 0, num_prompt)
    gen_len = jnp.clip(gen_len, 0, num_frames)
    real = (jnp.arange(num_frames)[None] < gen_len[:, None])[:, None]  # [B, 1, G]
    gen = jnp.full((batch, num_q, num_frames), cfg.mask_id, jnp.int32)
    if start_level > 1:
        gen = gen.at[:, : start_level - 1].set(given[:, : start_level - 1].astype(jnp.int32))
    gen = jnp.where(real, gen, 0)
    in_prompt = jnp.arange(num_prompt)[None, None] < prompt_len[:, None, None]
    base = jnp.zeros((batch, num_q, num_prompt + num_frames), jnp.int32)
    base = base.at[:, :, :num_prompt].set(jnp.where(in_prompt, prompt, 0))
    if semantic is not None:  # (prompt ids [B, P], generated-frame ids [B, G]) -> packed [B, P+G]
        prompt_sem, gen_sem = semantic
        packed = jnp.zeros((batch, 1, num_prompt + num_frames), jnp.int32)
        packed = packed.at[:, 0, :num_prompt].set(prompt_sem.astype(jnp.int32))
        semantic = _place(packed, gen_sem[:, None].astype(jnp.int32), prompt_len)[:, 0]
    ctx = (text, text_len, prompt_len, gen_len, task, semantic, prefix)
    tables = _schedule_tables(schedule, steps, start_level)
    gen, passes, flat = _decode_levels(model, params, ctx, base, gen, key, schedule, tables)
    ends = np.cumsum(steps[start_level - 1 :])
    counts = tuple(flat[end - n : end] for n, end in zip(steps[start_level - 1 :], ends))
    return gen, _place(base, gen, prompt_len), passes, counts


@partial(jax.jit, static_argnames=("cfg", "num_frames", "schedule", "start_level", "dtype"))
@wraps(masked_decode, assigned=())  # its signature, from which jit takes the static arguments
def masked_generate(*args, **kwargs) -> tuple[jax.Array, jax.Array]:
    """`masked_decode`, jitted -> (codes int32[B, Q, G] of the generated frames, 0 past gen_len;
    forward passes int32)."""
    gen, _, passes, _ = masked_decode(*args, **kwargs)
    return gen, passes
