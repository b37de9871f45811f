"""Compiling a jitted step once per batch shape, before the first step.

LM batches come in a fixed grid of shapes (nclm.data.token_pipeline: one per (text, frames)
bucket), and a jitted step compiles once per shape it meets. Left to `jax.jit`, a run stalls for
a compile at whatever step first meets a bucket (about 40 buckets at VALL-E size, a minute or more
each), and the step times it logs include them. `ShapePrograms` compiles every shape up front,
behind a progress bar, logs each program's time, and afterwards calls the compiled executables,
so no step compiles. With the persistent compilation cache (`nclm --jax-cache`) a resumed run
loads the same programs instead of compiling them.

    steps = ShapePrograms(jitted_step, "train step", batch_arg=1)
    steps.compile([(state_spec, batch_spec, key_spec) for batch_spec in bucket_specs])
    state, metrics = steps(state, batch, key)       # the program compiled for batch's shapes

Lowering (tracing, in Python) runs in turn; the XLA compiles run in `workers` threads, so that a
many-core host can overlap them. A shape nobody announced still runs: it is compiled when it
first comes, with a warning that names it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
from tqdm import tqdm

log = logging.getLogger("nclm.train")


def compile_workers() -> int:
    """Programs compiled at once: $NCLM_COMPILE_WORKERS, else a quarter of the CPUs, 1 to 8 (a
    large model's XLA compile holds gigabytes of host memory)."""
    value = os.environ.get("NCLM_COMPILE_WORKERS", "")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"NCLM_COMPILE_WORKERS={value!r}: expected an integer >= 1")
        return int(value)
    return max(1, min(8, (os.cpu_count() or 1) // 4))


def shape_key(tree: Any) -> tuple:
    """The shapes and dtypes of a pytree's leaves (arrays or ShapeDtypeStructs), in tree order."""
    return tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree_util.tree_leaves(tree))


def describe(tree: Any) -> str:
    """'text 32x64, codes 32x8x256, ...' for a dict of arrays; the shapes otherwise."""
    if isinstance(tree, dict):
        return ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in tree.items())
    return str([tuple(x.shape) for x in jax.tree_util.tree_leaves(tree)])


class ShapePrograms:
    """A jitted function's compiled programs, one per shape of argument `batch_arg`."""

    def __init__(self, fn: Any, name: str, batch_arg: int):
        self.fn, self.name, self.batch_arg = fn, name, batch_arg
        self.programs: dict[tuple, Any] = {}  # shape_key(batch) -> jax.stages.Compiled
        self.seconds: dict[tuple, float] = {}  # compile (or cache load) seconds per program

    def compile(self, arg_specs: Sequence[tuple], workers: int = 1, progress: bool = True) -> float:
        """Compiles fn for each argument tuple (arrays or ShapeDtypeStructs) not compiled yet;
        returns the wall seconds it took."""
        todo: dict[tuple, tuple] = {}
        for args in arg_specs:
            key = shape_key(args[self.batch_arg])
            if key not in self.programs and key not in todo:
                todo[key] = args
        if not todo:
            return 0.0
        start = time.perf_counter()
        bar = tqdm(
            total=len(todo),
            desc=f"compile {self.name}",
            disable=not progress or jax.process_index() != 0,
            dynamic_ncols=True,
        )
        try:
            with ThreadPoolExecutor(max(1, min(workers, len(todo)))) as pool:
                futures = []
                for key, args in todo.items():
                    lowered = self.fn.lower(*args)  # tracing is Python: one at a time
                    futures.append((key, args, pool.submit(_timed_compile, lowered)))
                for key, args, future in futures:
                    self.programs[key], self.seconds[key] = future.result()
                    bar.update(1)
                    log.info(
                        "compiled %s for %s in %.1f s",
                        self.name,
                        describe(args[self.batch_arg]),
                        self.seconds[key],
                    )
        finally:
            bar.close()
        total = time.perf_counter() - start
        log.info("compiled %d %s programs in %.1f s", len(todo), self.name, total)
        return total

    def __call__(self, *args):
        key = shape_key(args[self.batch_arg])
        if key not in self.programs:
            log.warning(
                "%s: no program was compiled ahead for %s; compiling it now",
                self.name,
                describe(args[self.batch_arg]),
            )
            self.compile([args], progress=False)
        return self.programs[key](*args)


def _timed_compile(lowered: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    compiled = lowered.compile()
    return compiled, time.perf_counter() - start
