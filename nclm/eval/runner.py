"""Scores evaluation rows (`nclm.eval.rows`) with the evaluators their metrics need.

    report = evaluate_rows("gen/rows.jsonl", out_dir="gen/eval")     # recognizer etc. default
    report = evaluate_rows(rows_path, recognizer="models/hubert-large-ls960-ft",
                           speaker_encoder="models/wavlm-base-plus-sv", metrics=("wer", "sim"))

Rows are all validated first, then only the evaluators some row needs are loaded, once. Each row's
audio is loaded with soundfile and resampled with soxr: to 16 kHz for the recognizer, the speaker
encoder, DNSMOS and the voice detector (whatever the file's rate), and the reference to the
output's own rate for the intrusive metrics (`nclm.eval.reference_metrics`). A metric that is
undefined for a row (no speech to embed, PESQ on silence) is null with the reason in the row's
`warnings`, and left out of the summary (`nclm.eval.summary`), never scored as zero.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nclm.audio.io import load_audio
from nclm.eval import reference_metrics
from nclm.eval.rows import Row, read_rows
from nclm.eval.summary import summarise, write_report

SAMPLE_RATE = 16000  # every model-based evaluator's rate
SILENCE_PEAK = 1e-4  # -80 dBFS: audio this quiet is reported as silent
DNSMOS_KEYS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808")


class Evaluators:
    """The evaluators the rows need, each loaded on first use (once per run)."""

    def __init__(self, recognizer: str = "pocketsphinx", speaker_encoder: str = "resemblyzer"):
        self._specs = {"recognizer": recognizer, "speaker_encoder": speaker_encoder}
        self._loaded: dict = {}

    def get(self, kind: str):
        if kind not in self._loaded:
            if kind == "recognizer":
                from nclm.eval.recognizers import load_recognizer

                self._loaded[kind] = load_recognizer(self._specs[kind])
            elif kind == "speaker_encoder":
                from nclm.eval.speaker_sim import load_speaker_encoder

                self._loaded[kind] = load_speaker_encoder(self._specs[kind])
            else:
                from nclm.eval.dnsmos import Dnsmos

                self._loaded[kind] = Dnsmos()
        return self._loaded[kind]

    def load_for(self, rows: list[Row]) -> None:
        needed = {m for row in rows for m in row.metrics}
        if needed & {"wer", "cer"}:
            self.get("recognizer")
        if "sim" in needed:
            self.get("speaker_encoder")
        if "dnsmos" in needed:
            self.get("dnsmos")

    def identities(self) -> dict:
        return {kind: evaluator.identity for kind, evaluator in self._loaded.items()}


def evaluate_rows(
    rows_path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    task: str | None = None,
    metrics: tuple[str, ...] | None = None,
    recognizer: str = "pocketsphinx",
    speaker_encoder: str = "resemblyzer",
    max_rows: int | None = None,
    progress: bool = True,
) -> dict:
    """Scores every row; returns the report (`nclm.eval.summary`), also written to `out_dir`."""
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"--max-rows: expected a positive integer, got {max_rows}")
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"--out {out_dir}: exists and is not a directory")
    rows = read_rows(rows_path, task, metrics)[:max_rows]
    evaluators = Evaluators(recognizer, speaker_encoder)
    start = _clocks()
    evaluators.load_for(rows)
    timing = {"load_evaluators": _clocks() - start}  # [wall, CPU] seconds, per metric below
    embeddings: dict[Path, np.ndarray | None] = {}  # a prompt shared by many rows is embedded once
    scored = []
    with tqdm(total=len(rows), unit="row", desc="eval", disable=not progress) as bar:
        for row in rows:
            scored.append(score_row(row, evaluators, embeddings, timing))
            bar.update(1)
    for record in scored:
        for note in record.get("warnings", []):
            print(f"nclm eval: {record['where']}: {note}", file=sys.stderr)
    report = summarise(scored, evaluators.identities(), str(rows_path))
    report["seconds"] = {name: round(float(s[0]), 3) for name, s in timing.items()}
    report["cpu_seconds"] = {name: round(float(s[1]), 3) for name, s in timing.items()}
    if out_dir is not None:
        write_report(report, scored, Path(out_dir))
    return report


def _clocks() -> np.ndarray:
    """[wall, CPU of this process (all threads)] seconds: on a shared machine the CPU time is
    the steadier measure of an evaluator's cost."""
    return np.array([time.perf_counter(), time.process_time()])


def score_row(row: Row, evaluators: Evaluators, embeddings: dict, timing: dict) -> dict:
    """One row's metrics; undefined values are None with a reason in `warnings`. Seconds spent
    per metric (audio loading included) are added to `timing` as [wall, CPU]."""
    record: dict = {"where": row.where, "task": row.task, **({"id": row.id} if row.id else {})}
    record.update({key: value for key, value in row.raw.items()})
    wav = load_audio(row.paths["audio"], SAMPLE_RATE)  # float32[S] at 16 kHz
    notes = []
    if np.max(np.abs(wav)) < SILENCE_PEAK:
        notes.append("audio is silent (peak below -80 dBFS)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for metric in row.metrics:
            start = _clocks()
            try:
                record.update(_metric(metric, row, wav, evaluators, embeddings, record))
            except ValueError as e:  # undefined here (too short, nothing outside the span)
                record[metric] = None
                notes.append(f"{metric} undefined: {' '.join(str(e).split())}")
            timing[metric] = timing.get(metric, 0.0) + _clocks() - start
    notes += [" ".join(str(w.message).split()) for w in caught if w.category is RuntimeWarning]
    for key, value in list(record.items()):
        if isinstance(value, float) and not math.isfinite(value):
            record[key] = None
            notes.append(f"{key} undefined (not finite)")
    if notes:
        record["warnings"] = list(dict.fromkeys(notes))  # one line per distinct reason
    return record


def _metric(metric: str, row: Row, wav: np.ndarray, evaluators, embeddings, record) -> dict:
    if metric in ("wer", "cer"):
        from nclm.eval.wer import char_errors, word_errors

        if "hypothesis" not in record:
            record["hypothesis"] = evaluators.get("recognizer").transcribe(wav)
        errors = (word_errors if metric == "wer" else char_errors)(row.text, record["hypothesis"])
        counts = {f"{metric}_errors": errors.errors, f"{metric}_len": errors.length}
        return {metric: errors.rate, **counts}
    if metric == "sim":
        record["sim_to"] = row.sim_to
        return {"sim": _similarity(row, wav, evaluators.get("speaker_encoder"), embeddings)}
    if metric == "dnsmos":
        return evaluators.get("dnsmos").score(wav)
    if metric == "speech_left":
        return {"speech_left": reference_metrics.speech_fraction(wav, SAMPLE_RATE)}
    est = load_audio(row.paths["audio"], row.sample_rate)
    ref = load_audio(row.paths["reference"], row.sample_rate)
    if metric == "mel_outside_edit":
        value = reference_metrics.mel_outside_span(ref, est, row.sample_rate, row.span)
        return {"mel_outside_edit": value}
    ref, est, note = reference_metrics.align(ref, est)
    if note:
        warnings.warn(note, RuntimeWarning, stacklevel=1)
    return reference_metrics.intrusive((metric,), ref, est, row.sample_rate)


def _similarity(row: Row, wav: np.ndarray, encoder, embeddings: dict) -> float:
    from nclm.eval.speaker_sim import cosine

    other = row.paths[row.sim_to]
    if other not in embeddings:
        embeddings[other] = encoder.embed(load_audio(other, SAMPLE_RATE))
    out, target = encoder.embed(wav), embeddings[other]
    if out is None or target is None:
        which = "the output" if out is None else f"the {row.sim_to} {row.raw[row.sim_to]}"
        raise ValueError(f"no speech to embed in {which}")
    return cosine(out, target)
