"""Stopping a training run early, with a checkpoint, on SIGTERM (preemption) or SIGINT (Ctrl-C).

On one process the signal sets a flag and the loop ends after the current step. On several, every
process must stop at the same step, or the one that leaves for the checkpoint collective waits
forever for the others still stepping. So SIGTERM is left to jax's preemption notifier: the
coordination service tells every process, and `reached_preemption_sync_point(step)` is true at
the same step everywhere (one past the furthest step any process had reached). A Ctrl-C on one
process is turned into a SIGTERM to itself, so it stops all of them the same way.

    stop = StopSignals()
    while ...:
        step += 1
        if stop.should_stop(step): break   # called at every step, with the same ids everywhere
    stop.restore()
"""

from __future__ import annotations

import os
import signal

import jax
from jax.experimental import multihost_utils


def _preemption_service() -> bool:
    """Whether jax started its preemption notifier: `jax.distributed.initialize` does so unless
    the `jax_enable_preemption_service` option is off (public API only, no jax internals)."""
    return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)


class StopSignals:
    def __init__(self):
        self.signal: int | None = None  # what this process received
        self.agreed = jax.process_count() > 1 and _preemption_service()
        # with agreement, jax's own SIGTERM handler (the preemption notifier) must stay in place
        handled = (signal.SIGINT,) if self.agreed else (signal.SIGTERM, signal.SIGINT)
        self._old = {s: signal.signal(s, self._on_signal) for s in handled}

    def _on_signal(self, signum, _frame) -> None:
        self.signal = signum
        if self.agreed:
            os.kill(os.getpid(), signal.SIGTERM)  # to the notifier, which tells every process

    def should_stop(self, step: int) -> bool:
        """Whether to end the loop after `step` (every process gets the same answer)."""
        if not self.agreed:
            return self.signal is not None
        if multihost_utils.reached_preemption_sync_point(step):
            self.signal = self.signal or signal.SIGTERM
            return True
        return False

    def restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
