"""The spine both trainers share: opening a run directory, restore-or-init, the step loop with its
log / evaluation / checkpoint schedule, signals, and closing everything. What differs between the
codec and the LM trainer (data, model, step, evaluation, export) is passed in, so each trainer
still reads top to bottom as one function.

    open_run(cfg, workdir)                     # one config per workdir, provenance, jax.distributed
    result = run_loop(cfg, workdir, Loop(...)) # restore or init, train to cfg.train.steps, save
    ... export from result.state ...
    raise_if_stopped(result)                   # Ctrl-C: exit 130; SIGTERM: exit 0 (both saved)

Schedules come from `cfg.train`: log_every, eval_every, checkpoint_every, keep_checkpoints, steps.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_collections
from tqdm import tqdm

from nclm.config import save_config
from nclm.distributed import initialize_distributed
from nclm.train.checkpoint import RunCheckpointer, abstract_with_shardings
from nclm.train.metrics import MetricWriter
from nclm.train.run_dir import check_workdir, truncate_metrics, write_run_info
from nclm.train.stopping import StopSignals

log = logging.getLogger("nclm.train")


def open_run(cfg: ml_collections.ConfigDict, workdir: Path) -> None:
    """Refuses a workdir that holds another config, starts jax.distributed where a cluster is
    detected, and (process 0) saves the resolved config and the run's provenance."""
    workdir.mkdir(parents=True, exist_ok=True)
    check_workdir(cfg, workdir)
    initialize_distributed()
    if jax.process_index() == 0:
        save_config(cfg, workdir / "config.json")
        write_run_info(workdir)


class Loop(NamedTuple):
    """What a trainer plugs into the spine."""

    init: Callable[[], Any]  # () -> a fresh train state on the mesh
    abstract_state: Any  # the state's shapes, to restore into
    state_shardings: Any
    data: Iterator[dict]  # this host's batches, with get_state()/set_state()
    step: Callable[[Any, dict], tuple[Any, dict]]  # (state, local batch) -> (state, metrics)
    work: Callable[[dict], float]  # a local batch's amount of work, for throughput
    work_metric: str  # its name per second, e.g. "perf/tokens_per_second"
    evaluate: Callable[[Any, int, MetricWriter], dict] | None  # (state, step, writer) -> metrics
    postfix: dict[str, str]  # progress-bar label -> metric name
    desc: str
    precompile: Callable[[bool], None] | None = None  # (progress) -> None: compile every program


class LoopResult(NamedTuple):
    state: Any
    step: int
    last: dict  # the last logged metrics (evaluation included)
    signal: int | None  # the signal that stopped the run early, if any


def run_loop(
    cfg: ml_collections.ConfigDict,
    workdir: Path,
    loop: Loop,
    stop_after: int | None = None,
    progress: bool = True,
) -> LoopResult:
    """Restores the latest checkpoint (state and data position) or initialises, then steps to
    `cfg.train.steps` (or `stop_after` steps of this call), logging, evaluating and saving on
    schedule. A signal ends the loop after the current step with a checkpoint."""
    t = cfg.train
    ckpt = RunCheckpointer(workdir / "checkpoints", keep=t.keep_checkpoints)
    writer = MetricWriter(workdir)
    stop, bar = StopSignals(), None
    try:
        state, start = _restore_or_init(ckpt, writer, loop)
        end = t.steps if stop_after is None else min(t.steps, start + stop_after)
        if loop.precompile is not None and start < end:  # not for a finished run
            loop.precompile(progress)
        bar = tqdm(
            total=t.steps,
            initial=start,
            disable=not progress or jax.process_index() != 0,
            desc=loop.desc,
            dynamic_ncols=True,
        )
        last, step, saved, stopped = {}, start, start, False
        timer = {"start": time.perf_counter(), "step": start, "work": 0.0}
        while step < end and not stopped:
            local = next(loop.data)
            state, metrics = loop.step(state, local)
            step += 1
            bar.update(1)
            timer["work"] += loop.work(local)
            if step % t.log_every == 0 or step == end:
                last = _log(writer, step, jax.device_get(metrics), timer, loop)  # waits for it
                bar.set_postfix({k: f"{last.get(m, 0.0):.3f}" for k, m in loop.postfix.items()})
            if loop.evaluate is not None and (step % t.eval_every == 0 or step == t.steps):
                last.update(loop.evaluate(state, step, writer))
            if step % t.checkpoint_every == 0 or step == end:
                ckpt.save(step, state, loop.data.get_state(), force=True)
                saved = step
            if timer["step"] == step:  # evaluation and checkpoints are not training time
                timer["start"] = time.perf_counter()
            stopped = stop.should_stop(step)  # the same step on every process
        if stopped and step > saved:  # not twice for one step
            log.warning("signal %s: saving a checkpoint at step %d", stop.signal, step)
            ckpt.save(step, state, loop.data.get_state(), force=True)
    finally:
        if bar is not None:
            bar.close()
        ckpt.close()
        writer.close()
        stop.restore()
    return LoopResult(state, step, last, stop.signal if stopped else None)


def _restore_or_init(ckpt: RunCheckpointer, writer: MetricWriter, loop: Loop) -> tuple[Any, int]:
    start = ckpt.latest_step()
    if start is None:
        return loop.init(), 0
    abstract = abstract_with_shardings(loop.abstract_state, loop.state_shardings)
    state, data_state = ckpt.restore(start, abstract)
    if data_state is not None:
        loop.data.set_state(data_state)
    truncate_metrics(writer.path, start)
    log.info("resumed from step %d", start)
    return state, start


def _log(writer: MetricWriter, step: int, metrics: dict, timer: dict, loop: Loop) -> dict:
    """Writes the step's metrics plus throughput since the last log, under perf/ (the only values
    that differ between a resumed and an uninterrupted run; the first window includes
    compilation unless the loop precompiles)."""
    seconds = time.perf_counter() - timer["start"]
    metrics["perf/step_seconds"] = seconds / (step - timer["step"])
    metrics[loop.work_metric] = timer["work"] / seconds
    last = writer.scalars(step, metrics)
    timer.update(start=time.perf_counter(), step=step, work=0.0)
    if last["nonfinite"]:
        log.warning("step %d: non-finite loss or gradient; the step was skipped", step)
    return last


def raise_if_stopped(result: LoopResult) -> None:
    """After the export. A run stopped by Ctrl-C exits as interrupted; one stopped by SIGTERM (a
    preemption or a scheduler's time limit) returns normally, so the process exits 0: its
    checkpoint is saved and the same command resumes it."""
    if result.signal == signal.SIGINT:
        raise KeyboardInterrupt(f"stopped by SIGINT at step {result.step}")
    if result.signal is not None:
        log.warning(
            "stopped by signal %d at step %d; the checkpoint is saved: run the same command to "
            "resume",
            result.signal,
            result.step,
        )
