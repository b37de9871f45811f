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
from nclm.distributed import wait_for_all
from nclm.lm.checkpoint import save_lm
from nclm.lm.config import LMConfig
from nclm.lm.experiment import lm_config_from
from nclm.lm.model import init_lm
from nclm.paths import as_path
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
from nclm.train.precompile import ShapePrograms, compile_workers
from nclm.train.run_dir import host_params
from nclm.train.warm_start import with_values

log = logging.getLogger("nclm.train")
BATCH_KEYS = ("text", "text_len", "codes", "code_len")
BATCH_RANKS = {"text": 2, "text_len": 1, "codes": 3, "code_len": 1, "semantic": 2}
TASK_KEYS = ("prefix_kind", "prefix_codes", "task", "target_start")  # SpeechX corpora
BATCH_RANKS.update(prefix_kind=2, prefix_codes=3, task=1, target_start=1)


def batch_keys(lm: LMConfig, multitask: bool = False) -> tuple[str, ...]:
    """The arrays a training batch carries: semantic ids too when the model is conditioned, the
    SpeechX prefix arrays for a multi-task corpus (nclm.tasks.simulate_shards)."""
    keys = BATCH_KEYS + (("semantic",) if lm.semantic_vocab_size else ())
    return keys + (TASK_KEYS if multitask else ())


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


def _check_keys(batch: dict, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ConfigError(
            f"the token corpus has no {missing} (semantic ids: nclm tokens extract --semantic DIR,"
            " or --config.lm.semantic_vocab_size=0)"
        )


def _global_batch(local: dict, mesh, rules, keys=BATCH_KEYS) -> dict:
    """This process's rows of a batch as global arrays."""
    _check_keys(local, keys)
    return {k: global_batch_array(np.asarray(local[k], np.int32), mesh, rules) for k in keys}


def train_lm(
    cfg: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict:
    """Trains (or resumes) the LM run in `workdir`; returns the last logged metrics."""
    # ---- run directory -------------------------------------------------------------------------
    workdir = as_path(workdir)
    index = _read_index(cfg.data.train, "--config.data.train")
    symbols = SymbolTable.load(Path(cfg.data.train) / index["symbols"])
    lm_cfg = lm_config_from(cfg, len(symbols))
    _check_tokens(lm_cfg, index, "--config.data.train")
    multitask = "tasks" in index
    if cfg.data.valid:
        valid_index = _read_index(cfg.data.valid, "--config.data.valid")
        _check_tokens(lm_cfg, valid_index, "valid")
        if ("tasks" in valid_index) != multitask:
            raise ConfigError(
                "--config.data.valid: one of the train/valid corpora is SpeechX-simulated "
                "(nclm tasks simulate) and the other is not; use the same kind for both"
            )
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
    keys = batch_keys(lm_cfg, multitask)
    eval_batches = [_global_batch(b, mesh, rules, keys) for b in valid]

    # ---- model, optimizer, shardings -----------------------------------------------------------
    trainer = build_lm_trainer(cfg, lm_cfg, mesh, multitask)
    step_key = jax.random.PRNGKey(cfg.seed + 2)
    data = make_token_iterator(d.train, seed=cfg.seed, **buckets)
    train_programs = ShapePrograms(trainer.step, "train step", batch_arg=1)
    eval_programs = ShapePrograms(trainer.eval, "eval step", batch_arg=1)

    def precompile(progress):
        """Every bucket's train step and the eval step, before the first step."""
        specs = [_batch_spec(b, keys) for b in data.bucket_batches()]
        workers = compile_workers()
        train_programs.compile(
            [(trainer.abstract_state, spec, step_key) for spec in specs], workers, progress
        )
        eval_programs.compile(
            [(trainer.abstract_state.params, b) for b in eval_batches], workers, progress
        )

    def step(state, local):
        return train_programs(state, _global_batch(local, mesh, rules, keys), step_key)

    def evaluate(state, step, writer):
        return writer.scalars(step, _evaluate(eval_programs, state, eval_batches))

    # ---- loop: restore or initialise, train, checkpoint ---------------------------------------
    result = run_loop(
        cfg,
        workdir,
        Loop(
            init=lambda: trainer.init(jax.random.PRNGKey(cfg.seed)),
            abstract_state=trainer.abstract_state,
            state_shardings=trainer.state_shardings,
            data=data,
            step=step,
            # real (unpadded) text + frame positions, this host's rows
            work=lambda local: float(np.sum(local["code_len"]) + np.sum(local["text_len"])),
            work_metric="perf/tokens_per_second",
            evaluate=evaluate if eval_batches else None,
            postfix={"ar": "ar/loss", "nar": "nar/loss"},
            desc=f"train lm {lm_cfg.name}",
            precompile=precompile,
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
                    "workdir": str(workdir),
                    # the tasks it was trained on (nclm enhance etc. refuse the others)
                    "tasks": [t for t, n in index["tasks"]["counts"].items() if n]
                    if multitask
                    else ["tts"],
                },
            )
    wait_for_all("nclm: lm export written")
    raise_if_stopped(result)
    return result.last


def _batch_spec(batch: dict, keys: tuple[str, ...]) -> dict:
    """The global batch's shapes, as `_global_batch` makes them (int32)."""
    _check_keys(batch, keys)
    return {k: jax.ShapeDtypeStruct(batch[k].shape, jnp.int32) for k in keys}


def _evaluate(eval_fn: Callable, state: LMTrainState, batches: list[dict]) -> dict:
    """Token-weighted validation metrics over the fixed batches, under eval/."""
    sums: dict[str, float] = {}
    for batch in batches:
        for k, v in jax.device_get(eval_fn(state.params, batch)).items():
            sums[k] = sums.get(k, 0.0) + float(v)
    out = {}
    for k, v in sums.items():
        name, metric = k.rsplit("/", 1)
        # a task absent from the validation split has no tokens: no figure rather than 0
        if metric != "tokens" and sums[f"{name}/tokens"] > 0:
            out[f"eval/{name}/{metric}"] = v / sums[f"{name}/tokens"]
    return out


class LMTrainer(NamedTuple):
    lm_cfg: LMConfig
    init: Callable  # key -> state on the mesh
    step: Callable  # (state, batch, key) -> (state, metrics)
    eval: Callable  # (params, batch) -> token-weighted sums
    state_shardings: Any
    abstract_state: Any


def build_lm_trainer(
    cfg: ml_collections.ConfigDict, lm_cfg: LMConfig, mesh, multitask: bool = False
) -> LMTrainer:
    rules = tuple(tuple(r) for r in cfg.sharding_rules)
    dtype = compute_dtype(cfg.train.compute_dtype, "--config.train.compute_dtype")
    o = cfg.optim
    tx = make_lm_optimizer(
        o.lr, o.warmup_steps, cfg.train.steps, o.b1, o.b2, o.weight_decay, o.clip_norm
    )
    objective = cfg.objective.to_dict()

    start = _init_from(cfg.get("init_from", ""), lm_cfg)

    def init_state(key):
        params = init_lm(lm_cfg, key)["params"]
        if start is not None:  # a trained LM; its task-token rows stay fresh (new tokens)
            params = warm_start(params, start)
        return LMTrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    boxed = jax.eval_shape(init_state, jax.random.PRNGKey(0))
    abstract = nn.meta.unbox(boxed)
    state_sh = tree_shardings(nn.get_partition_spec(boxed), abstract, mesh, rules)
    batch_sh = {
        k: batch_sharding(mesh, BATCH_RANKS[k], rules) for k in batch_keys(lm_cfg, multitask)
    }
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


def _init_from(path: str, lm_cfg: LMConfig) -> Any:
    """The params of the exported LM at `--config.init_from` (None when unset), checked against
    the run's model config."""
    if not path:
        return None
    from nclm.lm.checkpoint import load_lm

    try:
        their_cfg, params, _, _ = load_lm(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--config.init_from={path}: {e}") from None
    if their_cfg.to_dict() | {"dropout": 0} != lm_cfg.to_dict() | {"dropout": 0}:
        diff = sorted(k for k, v in their_cfg.to_dict().items() if lm_cfg.to_dict()[k] != v)
        raise ConfigError(f"--config.init_from={path}: its lm config differs in {diff}")
    return params


def warm_start(fresh: Any, trained: Any) -> Any:
    """`trained` params with fresh (just initialised) task-token rows 1.. of task_embed: a TTS
    checkpoint never trained them (SpeechX's new tokens start from scratch)."""
    task = nn.meta.unbox(fresh)["task_embed"]
    task = task.at[0].set(jnp.asarray(trained["task_embed"][0], task.dtype))
    return with_values(fresh, {**trained, "task_embed": task})
