"""Metrics out of a run: a JSONL log (one line per logged step) and TensorBoard event files.

Only process 0 writes. Values are fetched from the device once per logged step."""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from nclm.paths import append_line, as_path, uri


class MetricWriter:
    def __init__(self, workdir: str | os.PathLike, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = as_path(workdir) / "metrics.jsonl"
        self._tb = None
        if self.active and tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(uri(as_path(workdir) / "tensorboard"))

    def scalars(self, step: int, metrics: dict, prefix: str = "") -> dict:
        values = {f"{prefix}{k}": float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
        if self.active:
            append_line(self.path, json.dumps({"step": step, **values}))
            if self._tb is not None:
                for k, v in values.items():
                    self._tb.add_scalar(k, v, step)
        return values

    def audio(self, step: int, name: str, wav: np.ndarray, sample_rate: int) -> None:
        if self.active and self._tb is not None:
            self._tb.add_audio(
                name, np.clip(np.asarray(wav, np.float32), -1, 1), step, sample_rate=sample_rate
            )

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    path = as_path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
