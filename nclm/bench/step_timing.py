"""Timing a jitted training step: ahead-of-time compile, one warm-up call, then timed calls."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple


class StepTimes(NamedTuple):
    compile_seconds: float
    ours: list[float]  # seconds per step, each to block_until_ready
    reference: list[float]  # seconds per reference call (empty without one)


def time_train_step(
    step: Any, state: Any, batch: Any, key: Any, num_steps: int, reference: Callable | None = None
) -> StepTimes:
    """Compiles `step(state, batch, key)` (timed), warms it up, then times `num_steps` steps on
    the same batch. A `reference` (a callable that finishes its own work) is warmed up too and
    runs after each of our steps, so that both see the same machine load."""
    import jax

    start = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_seconds = time.perf_counter() - start
    if reference is not None:
        reference()
    state, metrics = compiled(state, batch, key)
    jax.block_until_ready(metrics)
    ours, theirs = [], []
    for _ in range(num_steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, key)
        jax.block_until_ready(metrics)
        ours.append(time.perf_counter() - start)
        if reference is not None:
            start = time.perf_counter()
            reference()
            theirs.append(time.perf_counter() - start)
    return StepTimes(compile_seconds, ours, theirs)
