"""CodecLM training, as one linear function: run dir, mesh, data, model, shardings, restore, loop,
export.

    nclm train --config configs/lm/valle.py --workdir runs/valle \
        --config.data.train=tokens/train --config.data.valid=tokens/valid

Restarting the same command resumes (parameters, optimizer, step, data iterator position) and
reproduces the uninterrupted run's losses. The finished run exports `WORKDIR/lm` for `nclm tts`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nclm.config import ConfigError, compute_dtype
from nclm.data.token_pipeline import make_eval_batches, make_token_iterator
from nclm.data.tokens import INDEX
from nclm.lm.checkpoint import save_lm
from nclm.lm.config import LMConfig
from nclm.lm.experiment import lm_config_from
from nclm.lm.model import init_lm
from nclm.sharding import (
    batch_sharding,
    batch_shards,
    global_batch_array,
    make_mesh,
    replicated,
    tree_shardings,
    with_activation_sharding,
)
from nclm.text.symbols import SymbolTable
from nclm.train.lm_step import LMTrainState, make_lm_eval_step, make_lm_train_step
from nclm.train.loop import Loop, open_run, raise_if_stopped, run_loop
from nclm.train.optim import make_lm_optimizer
from nclm.train.run_dir import host_params

log = logging.getLogger("nclm.train")
BATCH_KEYS = ("text", "text_len", "codes", "code_len")
BATCH_RANKS = {"text": 2, "text_len": 1, "codes": 3, "code_len": 1, "semantic": 2}


def batch_keys(lm: LMConfig) -> tuple[str, ...]:
    """The arrays a training batch carries: semantic ids too when the model is conditioned."""
    return BATCH_KEYS + (("semantic",) if lm.semantic_vocab_size else ())


def _read_index(tokens_dir: str, option: str) -> dict:
    path = Path(tokens_dir) / INDEX
    if not tokens_dir or not path.is_file():
        raise ConfigError(f"{option}={tokens_dir!r}: not a token directory (no {INDEX})")
    return json.loads(path.read_text())


def _check_tokens(lm: LMConfig, index: dict, option: str) -> None:
    k = index.get("semantic", {}).get("num_clusters", 0)
    if lm.semantic_vocab_size and lm.semantic_vocab_size != k:
        raise ConfigError(
            f"--config.lm.semantic_vocab_size={lm.semantic_vocab_size}: {option} has "
            + (
                f"{k} semantic clusters"
                if k
                else "no semantic ids (nclm tokens extract --semantic)"
            )
        )
    if (index["num_codebooks"], index["codebook_size"]) != (lm.num_codebooks, lm.codebook_size):
        raise ConfigError(
            f"{option}: tokens have {index['num_codebooks']} x {index['codebook_size']} codes, the "
            f"LM expects {lm.num_codebooks} x {lm.codebook_size} (--config.lm.num_codebooks / "
            "--config.lm.codebook_size)"
        )


def _global_batch(local: dict, mesh, rules, keys=BATCH_KEYS) -> dict:
    missing = [k for k in keys if k not in local]
    if missing:
        raise ConfigError(
            f"the token corpus has no {missing} (semantic ids: nclm tokens extract --semantic DIR,"
            " or --config.lm.semantic_vocab_size=0)"
        )
    return {k: global_batch_array(np.asarray(local[k], np.int32), mesh, rules) for k in keys}


def train_lm(
    cfg: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict:
    """Trains (or resumes) the LM run in `workdir`; returns the last logged metrics."""
    # ---- run directory -------------------------------------------------------------------------
    workdir = Path(workdir)
    index = _read_index(cfg.data.train, "--config.data.train")
    symbols = SymbolTable.load(Path(cfg.data.train) / index["symbols"])
    lm_cfg = lm_config_from(cfg, len(symbols))
    _check_tokens(lm_cfg, index, "--config.data.train")
    if cfg.data.valid:
        _check_tokens(lm_cfg, _read_index(cfg.data.valid, "--config.data.valid"), "valid")
    open_run(cfg, workdir)

    # ---- mesh, data ----------------------------------------------------------------------------
    mesh = make_mesh(dict(cfg.mesh))
    rules = tuple(tuple(r) for r in cfg.sharding_rules)
    d = cfg.data
    buckets = dict(
        text_buckets=tuple(d.text_buckets),
        frame_buckets=tuple(d.frame_buckets),
        max_tokens=d.max_tokens,
        row_multiple=batch_shards(mesh, rules),
    )
    valid = make_eval_batches(d.valid, **buckets, max_batches=d.eval_batches) if d.valid else []
    eval_batches = [_global_batch(b, mesh, rules, batch_keys(lm_cfg)) for b in valid]

    # ---- model, optimizer, shardings -----------------------------------------------------------
    trainer = build_lm_trainer(cfg, lm_cfg, mesh)
    step_key = jax.random.PRNGKey(cfg.seed + 2)

    def step(state, local):
        return trainer.step(state, _global_batch(local, mesh, rules, batch_keys(lm_cfg)), step_key)

    def evaluate(state, step, writer):
        return writer.scalars(step, _evaluate(trainer.eval, state, eval_batches))

    # ---- loop: restore or initialise, train, checkpoint ---------------------------------------
    result = run_loop(
        cfg,
        workdir,
        Loop(
            init=lambda: trainer.init(jax.random.PRNGKey(cfg.seed)),
            abstract_state=trainer.abstract_state,
            state_shardings=trainer.state_shardings,
            data=make_token_iterator(d.train, seed=cfg.seed, **buckets),
            step=step,
            # real (unpadded) text + frame positions, this host's rows
            work=lambda local: float(np.sum(local["code_len"]) + np.sum(local["text_len"])),
            work_metric="perf/tokens_per_second",
            evaluate=evaluate if eval_batches else None,
            postfix={"ar": "ar/loss", "nar": "nar/loss"},
            desc=f"train lm {lm_cfg.name}",
        ),
        stop_after,
        progress,
    )

    # ---- export --------------------------------------------------------------------------------
    if result.step >= cfg.train.steps:
        params = host_params(result.state.params)  # every process takes part in the gather
        if jax.process_index() == 0:
            codec = {
                k: index[k]
                for k in ("codec_id", "sample_rate", "frame_rate", "num_codebooks", "codebook_size")
            }
            save_lm(
                workdir / "lm",
                lm_cfg,
                params,
                symbols,
                codec,
                extra={
                    "trained_steps": int(result.step),
                    "max_text_tokens": max(d.text_buckets),
                    "max_audio_frames": max(d.frame_buckets) - 1,
                    "workdir": str(workdir.absolute()),
                },
            )
    raise_if_stopped(result)
    return result.last


def _evaluate(eval_fn: Callable, state: LMTrainState, batches: list[dict]) -> dict:
    """Token-weighted validation metrics over the fixed batches, under eval/."""
    sums: dict[str, float] = {}
    for batch in batches:
        for k, v in jax.device_get(eval_fn(state.params, batch)).items():
            sums[k] = sums.get(k, 0.0) + float(v)
    out = {}
    for k, v in sums.items():
        name, metric = k.rsplit("/", 1)
        if metric != "tokens":
            out[f"eval/{name}/{metric}"] = v / max(sums[f"{name}/tokens"], 1.0)
    return out


class LMTrainer(NamedTuple):
    lm_cfg: LMConfig
    init: Callable  # key -> state on the mesh
    step: Callable  # (state, batch, key) -> (state, metrics)
    eval: Callable  # (params, batch) -> token-weighted sums
    state_shardings: Any
    abstract_state: Any


def build_lm_trainer(cfg: ml_collections.ConfigDict, lm_cfg: LMConfig, mesh) -> LMTrainer:
    rules = tuple(tuple(r) for r in cfg.sharding_rules)
    dtype = compute_dtype(cfg.train.compute_dtype, "--config.train.compute_dtype")
    o = cfg.optim
    tx = make_lm_optimizer(
        o.lr, o.warmup_steps, cfg.train.steps, o.b1, o.b2, o.weight_decay, o.clip_norm
    )
    objective = cfg.objective.to_dict()

    def init_state(key):
        params = init_lm(lm_cfg, key)["params"]
        return LMTrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    boxed = jax.eval_shape(init_state, jax.random.PRNGKey(0))
    abstract = nn.meta.unbox(boxed)
    state_sh = tree_shardings(nn.get_partition_spec(boxed), abstract, mesh, rules)
    batch_sh = {k: batch_sharding(mesh, BATCH_RANKS[k], rules) for k in batch_keys(lm_cfg)}
    init = jax.jit(lambda k: nn.meta.unbox(init_state(k)), out_shardings=state_sh)
    step = jax.jit(
        with_activation_sharding(make_lm_train_step(lm_cfg, objective, tx, dtype), mesh, rules),
        in_shardings=(state_sh, batch_sh, replicated(mesh)),
        out_shardings=(state_sh, replicated(mesh)),
        donate_argnums=0,
    )
    eval_step = jax.jit(
        with_activation_sharding(make_lm_eval_step(lm_cfg, objective, dtype), mesh, rules),
        in_shardings=(state_sh.params, batch_sh),
        out_shardings=replicated(mesh),
    )
    return LMTrainer(lm_cfg, init, step, eval_step, state_sh, abstract)
