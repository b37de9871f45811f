"""Codec training, as one linear function: run dir, mesh, data, model, shardings, restore, loop.

    nclm train --config configs/codec/dac_16khz.py --workdir runs/dac16

Restarting the same command resumes from the latest checkpoint (train state, optimizer, EMA
codebooks, discriminator, step and data iterator position), and a resumed run reproduces the
uninterrupted run's losses exactly. SIGTERM/Ctrl-C save a checkpoint before exiting.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nclm.audio.io import load_audio, save_audio
from nclm.codec.checkpoint import save_codec
from nclm.codec.discriminators import DiscriminatorConfig, Discriminators
from nclm.codec.experiment import codec_config_from
from nclm.codec.model import Codec
from nclm.codec.rvq_ema import kmeans_init
from nclm.config import ConfigError, compute_dtype
from nclm.data.audio_pipeline import make_iterator
from nclm.data.manifest import read_manifest, resolve_audio
from nclm.distributed import wait_for_all
from nclm.paths import as_path
from nclm.sharding import (
    batch_sharding,
    batch_shards,
    global_batch_array,
    host_batch_slice,
    make_mesh,
    put_replicated,
    replicated,
    tree_shardings,
    with_activation_sharding,
)
from nclm.train.codec_step import (
    CodecTrainState,
    init_train_state,
    make_codec_eval_step,
    make_codec_train_step,
)
from nclm.train.loop import Loop, open_run, raise_if_stopped, run_loop
from nclm.train.metrics import MetricWriter
from nclm.train.optim import make_optimizer
from nclm.train.run_dir import host_params
from nclm.train.warm_start import with_values

log = logging.getLogger("nclm.train")


def segment_samples(cfg, codec_cfg) -> int:
    """Crop length rounded up to whole frames, so every crop is an exact number of codec frames."""
    hop = codec_cfg.hop_length
    return max(1, math.ceil(cfg.data.segment_seconds * codec_cfg.sample_rate / hop)) * hop


def _eval_batch(manifest: str, count: int, samples: int, sample_rate: int) -> dict:
    """The first `count` clips of the validation manifest, center-cropped or zero-padded."""
    records = read_manifest(manifest)[:count]
    wav = np.zeros((len(records), samples), np.float32)
    mask = np.zeros_like(wav)
    for i, rec in enumerate(records):
        x = load_audio(resolve_audio(manifest, rec), sample_rate)
        start = max(0, (len(x) - samples) // 2)
        x = x[start : start + samples]
        wav[i, : len(x)], mask[i, : len(x)] = x, 1.0
    return {"wav": wav, "mask": mask}


def train_codec(
    cfg: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict:
    """Trains (or resumes) the codec run in `workdir`. `stop_after` ends the call after that many
    steps of this call with a checkpoint (used to test resumption). Returns the last metrics."""
    # ---- run directory -------------------------------------------------------------------------
    workdir = as_path(workdir)
    codec_cfg = codec_config_from(cfg)
    DiscriminatorConfig.from_dict(cfg.discriminator.to_dict())  # fails early on a bad section
    if not cfg.data.train:
        raise ConfigError("--config.data.train: no training manifest given")
    open_run(cfg, workdir)

    # ---- mesh ----------------------------------------------------------------------------------
    mesh = make_mesh(dict(cfg.mesh))
    rules = tuple(tuple(r) for r in cfg.sharding_rules)

    # ---- data ----------------------------------------------------------------------------------
    segment = segment_samples(cfg, codec_cfg)
    batch_size = cfg.data.batch_size
    _, local_batch = host_batch_slice(batch_size)

    def iterator(seed):
        return make_iterator(
            cfg.data.train,
            sample_rate=codec_cfg.sample_rate,
            segment_samples=segment,
            batch_size=local_batch,
            seed=seed,
            shard_index=jax.process_index(),
            shard_count=jax.process_count(),
            short=cfg.data.short,
        )

    eval_batch = (  # on the devices once, reused by every evaluation
        put_replicated(
            _eval_batch(cfg.data.valid, cfg.data.eval_items, 2 * segment, codec_cfg.sample_rate),
            mesh,
        )
        if cfg.data.valid
        else None
    )

    # ---- model, optimizers, shardings ---------------------------------------------------------
    trainer = build_codec_trainer(cfg, mesh, segment, local_batch)

    def init():
        state = trainer.init(jax.random.PRNGKey(cfg.seed))
        fine_tuning = bool(cfg.get("init_from"))  # the checkpoint's codebooks are kept
        if codec_cfg.quantizer.kind == "ema" and cfg.train.kmeans_init and not fine_tuning:
            first = next(iterator(cfg.seed + 1))
            wav = global_batch_array(np.asarray(first["wav"], np.float32), mesh, rules)
            state = _kmeans_init(
                state, trainer.codec, codec_cfg, wav, cfg.seed, trainer.state_shardings
            )
        return state

    step_key = jax.random.PRNGKey(cfg.seed + 2)

    def step(state, local):
        batch = {
            k: global_batch_array(np.asarray(local[k], np.float32), mesh, rules)
            for k in ("wav", "mask")
        }
        return trainer.step(state, batch, step_key)

    evaluated = []  # reference clips go to TensorBoard with this process's first evaluation

    def evaluate(state, step, writer):
        metrics = _evaluate(
            trainer.eval,
            state,
            eval_batch,
            writer,
            step,
            codec_cfg.sample_rate,
            cfg.train.num_audio_samples,
            with_references=not evaluated,
        )
        evaluated.append(step)
        return metrics

    # ---- loop: restore or initialise, train, checkpoint ---------------------------------------
    seconds_per_batch = batch_size * segment / codec_cfg.sample_rate
    result = run_loop(
        cfg,
        workdir,
        Loop(
            init=init,
            abstract_state=trainer.abstract_state,
            state_shardings=trainer.state_shardings,
            data=iterator(cfg.seed),
            step=step,
            work=lambda _: seconds_per_batch,
            work_metric="perf/audio_seconds_per_second",
            evaluate=evaluate if eval_batch is not None else None,
            postfix={"mel": "loss/mel", "disc": "loss/disc"},
            desc=f"train {codec_cfg.name}",
        ),
        stop_after,
        progress,
    )

    # ---- export --------------------------------------------------------------------------------
    if result.step >= cfg.train.steps:
        state = result.state
        variables = {"params": state.params}
        if state.codebooks:
            variables["codebooks"] = state.codebooks
        variables = host_params(variables)  # every process takes part in the gather
        if jax.process_index() == 0:
            save_codec(
                workdir / "codec",
                codec_cfg,
                variables,
                extra={"trained_steps": int(result.step), "workdir": str(workdir)},
            )
    wait_for_all("nclm: codec export written")
    raise_if_stopped(result)
    return result.last


class CodecTrainer(NamedTuple):
    codec: Codec
    init: Callable  # key -> state, placed on the mesh
    step: Callable  # (state, batch, key) -> (state, metrics), jitted with shardings
    eval: Callable  # (state, batch) -> (metrics, decoded)
    state_shardings: Any
    abstract_state: Any


def build_codec_trainer(
    cfg: ml_collections.ConfigDict, mesh, segment: int, local_batch: int
) -> CodecTrainer:
    """The jitted init/train/eval functions of a codec experiment on `mesh`, for batches of
    `local_batch` rows per host."""
    codec_cfg = codec_config_from(cfg)
    disc_cfg = DiscriminatorConfig.from_dict(cfg.discriminator.to_dict())
    rules = tuple(tuple(r) for r in cfg.sharding_rules)
    global_batch, shards = local_batch * jax.process_count(), batch_shards(mesh, rules)
    if global_batch % shards:
        raise ConfigError(
            f"--config.data.batch_size={global_batch} must be a multiple of the "
            f"{shards} batch shards of the mesh {dict(mesh.shape)} (--config.mesh)"
        )
    dtype = compute_dtype(cfg.train.get("compute_dtype", "float32"), "--config.train.compute_dtype")
    codec, disc = Codec(codec_cfg), Discriminators(disc_cfg)
    o = cfg.optim
    tx_g = make_optimizer(o.lr, o.b1, o.b2, o.weight_decay, o.decay_rate, o.clip_norm)
    tx_d = make_optimizer(o.disc_lr, o.b1, o.b2, o.weight_decay, o.decay_rate, o.clip_norm)
    losses_cfg = cfg.losses.to_dict()
    dummy = jnp.zeros((1, segment), jnp.float32)
    start = init_from(cfg.get("init_from", ""), codec_cfg)

    def init_state(key, start):
        k_codec, k_books, k_disc = jax.random.split(key, 3)
        variables = codec.init({"params": k_codec, "codebooks": k_books}, dummy)
        if start is not None:  # fine-tuning: the checkpoint's codec, fresh discriminators
            variables = with_values(variables, start)
        disc_params = disc.init(k_disc, dummy)["params"]
        return init_train_state(variables, disc_params, tx_g, tx_d, losses_cfg)

    boxed = jax.eval_shape(init_state, jax.random.PRNGKey(0), start)
    abstract = nn.meta.unbox(boxed)
    state_sh = tree_shardings(nn.get_partition_spec(boxed), abstract, mesh, rules)
    batch_sh = {k: batch_sharding(mesh, 2, rules) for k in ("wav", "mask")}
    # the checkpoint's weights enter as an argument: as a closure they would be program constants
    init_jit = jax.jit(lambda k, s: nn.meta.unbox(init_state(k, s)), out_shardings=state_sh)
    init = lambda key: init_jit(key, start)
    step = jax.jit(
        with_activation_sharding(
            make_codec_train_step(codec_cfg, disc_cfg, losses_cfg, tx_g, tx_d, dtype), mesh, rules
        ),
        in_shardings=(state_sh, batch_sh, replicated(mesh)),
        out_shardings=(state_sh, replicated(mesh)),
        donate_argnums=0,
    )
    return CodecTrainer(
        codec,
        init,
        step,
        # replicated outputs: every process can read the metrics and the decoded clips
        jax.jit(make_codec_eval_step(codec_cfg), out_shardings=replicated(mesh)),
        state_sh,
        abstract,
    )


QUANTIZER_TRAINING = ("decay", "epsilon", "dead_code_threshold", "kmeans_iters", "dropout")


def init_from(path: str, codec_cfg) -> dict | None:
    """The variables of the codec checkpoint at `--config.init_from` (None when unset): a
    converted published codec (`nclm codec convert`) or an exported run (WORKDIR/codec). Its
    model must be the experiment's: the configs may differ only in the name and the quantizer's
    training settings (EMA decay, dead-code threshold, dropout...), which the run's config sets."""
    if not path:
        return None
    from nclm.codec.checkpoint import load_codec

    try:
        their_cfg, variables, _ = load_codec(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--config.init_from={path}: {e}") from None

    def model(cfg) -> dict:
        fields = {k: v for k, v in cfg.to_dict().items() if k != "name"}
        quantizer = {k: v for k, v in fields["quantizer"].items() if k not in QUANTIZER_TRAINING}
        return {**fields, "quantizer": quantizer}

    theirs, ours = model(their_cfg), model(codec_cfg)
    diff = sorted(k for k in theirs if theirs[k] != ours.get(k))
    if diff:
        raise ConfigError(
            f"--config.init_from={path}: its codec config differs from --config.codec in {diff}"
        )
    return variables


def _kmeans_init(
    state: CodecTrainState, codec: Codec, codec_cfg, wav: jax.Array, seed: int, state_sh
) -> CodecTrainState:
    """EMA codebooks from k-means on the encoder's latents of one global batch (EnCodec's init),
    in one program over the mesh, so every process ends with the same codebooks."""

    def init_books(state, wav):
        latents = codec.apply(
            {"params": state.params, "codebooks": state.codebooks}, wav, method="encode_latent"
        )
        frames = latents.reshape(-1, latents.shape[-1])
        books = kmeans_init(frames, codec_cfg.quantizer, jax.random.PRNGKey(seed + 3))
        return state.replace(codebooks={"quantizer": books})

    return jax.jit(init_books, out_shardings=state_sh)(state, wav)


def _evaluate(
    eval_fn,
    state,
    batch: dict,
    writer: MetricWriter,
    step: int,
    sample_rate: int,
    num_audio: int,
    with_references: bool,
) -> dict:
    """Validation metrics and decoded clips (plus the reference clips, the first time)."""
    metrics, x_hat = eval_fn(state, batch)
    logged = writer.scalars(step, metrics, prefix="valid/")
    x_hat, wav = jax.device_get((x_hat, batch["wav"]))
    for i in range(min(num_audio, len(x_hat))):
        writer.audio(step, f"valid/decoded_{i}", x_hat[i], sample_rate)
        if with_references:
            writer.audio(step, f"valid/reference_{i}", wav[i], sample_rate)
    writer.flush()
    return logged


def save_decoded_samples(codec_dir: Path, manifest: str, out_dir: Path, count: int) -> list[Path]:
    """Decodes the first `count` clips of `manifest` with a saved codec into `out_dir`."""
    from nclm.codec.interface import NeuralCodec

    codec = NeuralCodec.load(codec_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for rec in read_manifest(manifest)[:count]:
        x = load_audio(resolve_audio(manifest, rec), codec.sample_rate)
        codes, frames = codec.encode(x[None])
        y, _ = codec.decode(codes, frames)
        path = out_dir / f"{Path(rec['audio']).stem}.wav"
        save_audio(path, y[0, : len(x)], codec.sample_rate)
        paths.append(path)
    return paths
