"""The CodecLM training step `(state, batch, rng) -> (state, metrics)` and its evaluation step.

One step trains both VALL-E objectives on the same batch and the same parameter tree:
  AR:  teacher forcing over [text | BOS, level-1 codes]; cross-entropy on every code and the EOS
       (nclm.lm.layout.ar_audio);
  NAR: one level j ~ U{2..Q} for the whole batch (as the VALL-E reference), a prefix prompt of
       15-30 % of each utterance embedding all levels, cross-entropy on level j of the rest.
  masked (SoundStorm): one level q ~ U{1..Q} for the batch; per example a prompt delimiter
       ~ U{0..len-1}, a mask ratio cos(u), u ~ U[0, pi/2], applied to level q in spans of
       `mask_span` frames, all levels > q masked, levels < q visible; with probability
       `cond_drop` the text and prompt are dropped (the null condition of guidance); CE on
       the masked level-q codes (nclm.lm.layout.span_mask / masked_input / drop_condition).
  loss = ar_weight * CE_ar + nar_weight * CE_nar + masked_weight * CE_masked, each the mean
  over the batch's real tokens; an objective with weight 0 is not computed.
Empty rows (code_len 0, the padding of a bucket's last batch) carry no weight. A step whose loss
or gradients are not finite changes no parameter or moment and reports `nonfinite = 1`; the step
counter and the learning-rate schedule still advance together (optim.skip_update).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from nclm.lm import layout
from nclm.lm.config import LMConfig
from nclm.lm.model import CodecLM
from nclm.lm.speechx import TASKS, Prefix
from nclm.train.optim import all_finite, global_norm, keep_if_finite, skip_update


@flax.struct.dataclass
class LMTrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def token_metrics(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> dict:
    """Weighted mean cross-entropy and top-1/top-10 accuracy of logits[..., V] (float32) against
    targets[...], plus the weight total (the number of tokens)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    target_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    rank = jnp.sum(logp > target_logp[..., None], axis=-1)  # how many ids beat the target
    total = jnp.maximum(weights.sum(), 1.0)
    return {
        "loss": -jnp.sum(target_logp * weights) / total,
        "top1": jnp.sum((rank < 1) * weights) / total,
        "top10": jnp.sum((rank < 10) * weights) / total,
        "tokens": weights.sum(),
    }


def _prefix(batch: dict) -> Prefix | None:
    """The SpeechX prefix of a multi-task batch (nclm.lm.speechx), None for a TTS-only corpus."""
    if "prefix_kind" not in batch:
        return None
    return Prefix(batch["prefix_kind"], batch["prefix_codes"])


def _target_start(batch: dict) -> jax.Array:
    return batch.get("target_start", jnp.zeros_like(batch["code_len"]))


def task_prompt_len(batch: dict, sampled: jax.Array) -> jax.Array:
    """The NAR/masked prompt of each row: TTS rows keep the sampled one (VALL-E's random
    prefix), SpeechX rows their target_start (the known pre frames of an edit, else 0)."""
    if "task" not in batch:
        return sampled
    return jnp.where(batch["task"] == 0, sampled, _target_start(batch))


def ar_outputs(model: CodecLM, params, batch: dict, rngs: dict | None = None):
    """(logits, targets, weights) of the AR objective; no loss before target_start."""
    cfg = model.cfg
    code_len = batch["code_len"]
    inputs, targets, weights = layout.ar_audio(
        batch["codes"][:, 0], code_len, cfg.bos_id, cfg.eos_id, cfg.pad_id
    )
    t = jnp.arange(inputs.shape[1])[None]
    weights = weights * ((code_len > 0)[:, None] & (t >= _target_start(batch)[:, None]))
    task = jnp.zeros_like(code_len)
    logits = model.apply(
        {"params": params},
        batch["text"],
        batch["text_len"],
        inputs,
        code_len + 1,
        task,
        _prefix(batch),
        method=CodecLM.ar_logits,
        rngs=rngs,
    )
    return logits, jnp.minimum(targets, cfg.eos_id), weights


def ar_terms(model: CodecLM, params, batch: dict, rngs: dict | None = None) -> dict:
    return token_metrics(*ar_outputs(model, params, batch, rngs))


def nar_outputs(
    model: CodecLM, params, batch: dict, level: jax.Array, prompt_len: jax.Array, rngs=None
):
    """(logits, targets, weights) of the NAR pass predicting codebook `level` (1-based, >= 2)
    after `prompt_len`."""
    codes, code_len = batch["codes"], batch["code_len"]
    num_q, num_frames = codes.shape[1], codes.shape[2]
    visible = layout.nar_levels_visible(prompt_len, code_len, level, num_q, num_frames)
    logits = model.apply(
        {"params": params},
        batch["text"],
        batch["text_len"],
        codes,
        code_len,
        visible,
        level,
        jnp.zeros_like(code_len),
        _prefix(batch),
        method=CodecLM.nar_logits,
        rngs=rngs,
    )
    targets = jax.lax.dynamic_index_in_dim(codes, level - 1, axis=1, keepdims=False)
    return logits, targets, layout.nar_loss_weights(prompt_len, code_len, num_frames)


def nar_terms(model, params, batch, level, prompt_len, rngs=None) -> dict:
    return token_metrics(*nar_outputs(model, params, batch, level, prompt_len, rngs))


def masked_outputs(
    model: CodecLM,
    params,
    batch: dict,
    level: jax.Array,
    prompt_len: jax.Array,
    level_mask: jax.Array,
    drop: jax.Array,
    rngs=None,
):
    """(logits, targets, weights) of the masked pass for codebook `level` with level_mask[B, T]
    hidden."""
    cfg = model.cfg
    codes, code_len = batch["codes"], batch["code_len"]
    tokens = layout.masked_input(codes, level, level_mask, prompt_len, cfg.mask_id)
    text, text_len, tokens = layout.drop_condition(
        drop, batch["text"], batch["text_len"], tokens, prompt_len, cfg.mask_id
    )
    semantic = None
    if cfg.semantic_vocab_size:
        if "semantic" not in batch:
            raise ValueError(
                f"lm.semantic_vocab_size={cfg.semantic_vocab_size} but the token corpus has no "
                "semantic ids (nclm tokens extract --semantic DIR)"
            )
        semantic = layout.drop_semantic(drop, batch["semantic"], cfg.semantic_null_id)
    logits = model.apply(
        {"params": params},
        text,
        text_len,
        tokens,
        code_len,
        level,
        jnp.zeros_like(code_len),
        semantic,
        _prefix(batch),
        method=CodecLM.masked_logits,
        rngs=rngs,
    )
    targets = jax.lax.dynamic_index_in_dim(codes, level - 1, axis=1, keepdims=False)
    t = jnp.arange(codes.shape[2])[None]
    real = (t >= prompt_len[:, None]) & (t < code_len[:, None])
    return logits, targets, (level_mask & real).astype(jnp.float32)


def masked_terms(model, params, batch, level, prompt_len, level_mask, drop, rngs=None) -> dict:
    return token_metrics(
        *masked_outputs(model, params, batch, level, prompt_len, level_mask, drop, rngs)
    )


def sample_masking(key: jax.Array, batch: dict, objective: dict):
    """SoundStorm's training mask: (prompt_len[B], level_mask[B, T], drop[B]). SpeechX rows
    take their target_start as the prompt and are never dropped to the null condition (it
    would drop their acoustic prompt, and guidance is a TTS tool)."""
    code_len, num_frames = batch["code_len"], batch["codes"].shape[2]
    k_prompt, k_ratio, k_span, k_drop = jax.random.split(key, 4)
    prompt_len = jnp.floor(jax.random.uniform(k_prompt, code_len.shape) * code_len)
    prompt_len = task_prompt_len(batch, prompt_len.astype(jnp.int32))
    ratio = jnp.cos(jax.random.uniform(k_ratio, code_len.shape, maxval=jnp.pi / 2))
    t = jnp.arange(num_frames)[None]
    eligible = (t >= prompt_len[:, None]) & (t < code_len[:, None])
    level_mask = layout.span_mask(k_span, ratio, eligible, int(objective["mask_span"]))
    drop = jax.random.bernoulli(k_drop, objective["cond_drop"], code_len.shape)
    if "task" in batch:
        drop = drop & (batch["task"] == 0)
    return prompt_len, level_mask, drop


def make_lm_train_step(
    cfg: LMConfig, objective: dict, tx: optax.GradientTransformation, dtype: Any = jnp.float32
) -> Callable:
    model = CodecLM(cfg, dtype, deterministic=False)
    ar_w, nar_w = float(objective["ar_weight"]), float(objective["nar_weight"])
    masked_w = float(objective.get("masked_weight", 0.0))
    use_nar = cfg.num_codebooks > 1 and nar_w > 0
    if ar_w <= 0 and not use_nar and masked_w <= 0:
        raise ValueError("objective: every weight (ar, nar, masked) is 0; nothing to train")

    def step(state: LMTrainState, batch: dict, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        k_ar, k_nar, k_level, k_prompt, k_masked, k_mlevel, k_mask = jax.random.split(rng, 7)

        def loss_fn(params):
            terms, total = {}, 0.0
            if ar_w > 0:
                terms["ar"] = ar_terms(model, params, batch, {"dropout": k_ar})
                total = total + ar_w * terms["ar"]["loss"]
            if use_nar:
                level = jax.random.randint(k_level, (), 2, cfg.num_codebooks + 1)
                prompt_len = layout.sample_prompt_len(
                    k_prompt,
                    batch["code_len"],
                    objective["prompt_low"],
                    objective["prompt_high"],
                    objective["prompt_cap"],
                )
                prompt_len = task_prompt_len(batch, prompt_len)
                terms["nar"] = nar_terms(
                    model, params, batch, level, prompt_len, {"dropout": k_nar}
                )
                terms["nar"]["level"] = level.astype(jnp.float32)
                total = total + nar_w * terms["nar"]["loss"]
            if masked_w > 0:
                level = jax.random.randint(k_mlevel, (), 1, cfg.num_codebooks + 1)
                masking = sample_masking(k_mask, batch, objective)
                terms["masked"] = masked_terms(
                    model, params, batch, level, *masking, {"dropout": k_masked}
                )
                terms["masked"]["level"] = level.astype(jnp.float32)
                total = total + masked_w * terms["masked"]["loss"]
            return total, terms

        (total, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = all_finite(grads, total)
        new = keep_if_finite(
            finite,
            LMTrainState(state.step + 1, params, opt_state),
            state.replace(step=state.step + 1, opt_state=skip_update(state.opt_state)),
        )
        metrics = {
            "loss/total": total,
            "grad_norm": global_norm(grads),
            "nonfinite": 1.0 - finite.astype(jnp.float32),
        }
        for name, t in terms.items():
            metrics.update({f"{name}/{k}": v for k, v in t.items()})
        return new, metrics

    return step


def make_lm_eval_step(cfg: LMConfig, objective: dict, dtype: Any = jnp.float32) -> Callable:
    """(params, batch) -> sums for validation: AR metrics and, for every level 2..Q, the NAR
    metrics with a fixed prompt of `prompt_eval` of each utterance (levels run in `lax.map` with
    the level traced: one compiled pass, not one per level). Values are weighted by their
    token counts so batches combine exactly (divide by `<name>/tokens`). A multi-task batch
    (with `task`) adds `<task>/ar`, `<task>/nar` and `<task>/masked` (levels pooled) per
    SpeechX task (nclm.lm.speechx.TASKS)."""
    model = CodecLM(cfg, dtype)

    def eval_step(params, batch):
        out = {}
        tasks = batch.get("task")

        def add(name, t):
            out.update({f"{name}/{k}": t[k] * t["tokens"] for k in ("loss", "top1", "top10")})
            out[f"{name}/tokens"] = t["tokens"]

        def add_outputs(name, outputs):
            """outputs: (logits, targets, weights), maybe with a leading level axis."""
            logits, targets, weights = outputs
            add(name, token_metrics(logits, targets, weights))
            if tasks is None:
                return
            for k, task in enumerate(TASKS):
                row = (tasks == k).astype(jnp.float32)[:, None]
                add(f"{task}/{name}", token_metrics(logits, targets, weights * row))

        add_outputs("ar", ar_outputs(model, params, batch))
        code_len = batch["code_len"]
        prompt_len = jnp.clip(
            jnp.floor(objective["prompt_eval"] * code_len).astype(jnp.int32),
            0,
            jnp.maximum(code_len - 1, 0),
        )
        prompt_len = task_prompt_len(batch, prompt_len)
        if cfg.num_codebooks > 1:
            levels = jnp.arange(2, cfg.num_codebooks + 1, dtype=jnp.int32)
            per_level = jax.lax.map(
                lambda level: nar_terms(model, params, batch, level, prompt_len), levels
            )  # one compiled body, the level traced; metrics stacked over levels
            for i, level in enumerate(range(2, cfg.num_codebooks + 1)):
                add(f"nar_{level}", {k: v[i] for k, v in per_level.items()})
            if tasks is not None:
                pooled = jax.lax.map(
                    lambda level: nar_outputs(model, params, batch, level, prompt_len), levels
                )
                add_task_pooled(add, "nar", pooled, tasks)
        if objective.get("masked_weight", 0.0) > 0:  # every level, half its frames masked
            t = jnp.arange(batch["codes"].shape[2])[None]
            half = (t - prompt_len[:, None]) % 2 == 0
            no_drop = jnp.zeros_like(code_len, bool)
            levels = jnp.arange(1, cfg.num_codebooks + 1, dtype=jnp.int32)
            per_level = jax.lax.map(
                lambda level: masked_outputs(
                    model, params, batch, level, prompt_len, half, no_drop
                ),
                levels,
            )
            for i in range(cfg.num_codebooks):
                add(f"masked_{i + 1}", token_metrics(*(v[i] for v in per_level)))
            if tasks is not None:
                add_task_pooled(add, "masked", per_level, tasks)
        return out

    return eval_step


def add_task_pooled(add: Callable, name: str, outputs, tasks: jax.Array) -> None:
    """Per-task metrics of level-stacked (logits [K, B, T, V], targets, weights [K, B, T])."""
    logits, targets, weights = outputs
    for k, task in enumerate(TASKS):
        row = (tasks == k).astype(jnp.float32)[None, :, None]
        add(f"{task}/{name}", token_metrics(logits, targets, weights * row))
