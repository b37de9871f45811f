"""Evaluation rows: one JSON object per line, and which metrics each task is scored with.

    {"audio": "out/0001.wav", "text": "what was to be said", "prompt": "prompts/0001.wav",
     "reference": "clean/0001.wav", "enrol": "spk/0001.wav", "task": "tts",
     "span": [1.20, 2.05], "id": "0001"}

`audio` is the output to score; the paths are absolute or relative to the JSONL's folder. A
request file of `nclm tts --batch` ({"text", "prompt", "prompt_text", "out"}) is read as rows
too: `out` is the audio and the task is tts. Of other keys, `id` (or `utt_id`) is kept in
the scored rows; the rest are ignored. What each field means per task (SpeechX's metrics):

    task  metrics (default)                    fields they read
    tts   wer cer sim dnsmos                   text; prompt (else enrol, else reference)
    ns    pesq_wb stoi si_sdr dnsmos wer       reference = the clean speech; text
    sr    si_sdr speech_left                   reference = the noise alone
    tse   sim wer pesq_wb                      enrol (else prompt); text; reference = the target
    edit  wer sim mel_outside_edit             text = the new transcript; prompt (else
                                               reference); reference + span [start, end] s
                                               = the original and the edited region in it

Any metric can be asked of any task (`metrics=`), given its fields: mel_distance and mcd read
`reference` like pesq_wb; `dnsmos` stands for its four scores.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from nclm.audio.io import AudioError, audio_info

TASK_METRICS = {
    "tts": ("wer", "cer", "sim", "dnsmos"),
    "ns": ("pesq_wb", "stoi", "si_sdr", "dnsmos", "wer"),
    "sr": ("si_sdr", "speech_left"),
    "tse": ("sim", "wer", "pesq_wb"),
    "edit": ("wer", "sim", "mel_outside_edit"),
}
METRICS = (
    "wer", "cer", "sim", "dnsmos", "pesq_wb", "stoi", "si_sdr", "mel_distance", "mcd",
    "mel_outside_edit", "speech_left",
)  # fmt: skip
_SIM_SOURCES = {"tse": ("enrol", "prompt", "reference")}
_SIM_DEFAULT = ("prompt", "enrol", "reference")
_AUDIO_FIELDS = ("audio", "prompt", "reference", "enrol")


class RowError(ValueError):
    """A row that cannot be scored; one line naming the file, line and field."""


@dataclass
class Row:
    where: str  # "rows.jsonl:3", for messages
    task: str
    metrics: tuple[str, ...]
    paths: dict[str, Path]  # audio, and prompt/reference/enrol where given
    raw: dict[str, str]  # the paths as written
    text: str | None = None
    span: tuple[float, float] | None = None
    id: str | None = None
    sim_to: str | None = None  # which field SIM compares with
    sample_rate: int = 0  # the output's own rate


def sim_source(task: str, fields: dict) -> str | None:
    return next((f for f in _SIM_SOURCES.get(task, _SIM_DEFAULT) if f in fields), None)


def _needs(metric: str, task: str, fields: dict) -> str | None:
    """The missing field this metric needs, as words for the message; None when all present."""
    if metric in ("wer", "cer"):
        return None if "text" in fields else "'text' (the transcript to recognise)"
    if metric == "sim":
        sources = " or ".join(repr(f) for f in _SIM_SOURCES.get(task, _SIM_DEFAULT))
        return None if sim_source(task, fields) else f"{sources} (audio to compare the voice with)"
    if metric == "mel_outside_edit":
        missing = " and ".join(repr(f) for f in ("reference", "span") if f not in fields)
        return f"{missing} (the original and the edited span)" if missing else None
    if metric in ("pesq_wb", "stoi", "si_sdr", "mel_distance", "mcd"):
        what = "the noise" if task == "sr" else "the clean/target speech"
        return None if "reference" in fields else f"'reference' ({what})"
    return None


def parse_metrics(spec: str | None) -> tuple[str, ...] | None:
    """ "wer,sim" -> ("wer", "sim"); None -> None (each task's defaults)."""
    if spec is None:
        return None
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(f"--metrics {spec}: unknown {unknown}; expected some of {list(METRICS)}")
    return names


def read_rows(
    path: str | os.PathLike, task: str | None = None, metrics: tuple[str, ...] | None = None
) -> list[Row]:
    """Every row validated (fields, task, each audio file's header) before any model loads.
    `task` is the default for rows without one; `metrics` replaces the tasks' defaults."""
    path = Path(path)
    if task is not None and task not in TASK_METRICS:
        raise ValueError(f"--task {task}: expected one of {list(TASK_METRICS)}")
    if not path.is_file():
        raise RowError(f"{path}: no such rows file (expected JSONL)")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            rows.append(_row(f"{path}:{number}", line, path.parent, task, metrics))
    if not rows:
        raise RowError(f"{path}: no rows (expected one JSON object per line)")
    return rows


def _row(where: str, line: str, root: Path, task: str | None, metrics) -> Row:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise RowError(f"{where}: invalid JSON ({e})") from None
    if not isinstance(record, dict):
        raise RowError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "audio" not in record and "out" in record:  # an `nclm tts --batch` request
        record = {"task": "tts", **record, "audio": record["out"]}
    row_task = record.get("task", task)
    if row_task not in TASK_METRICS:
        raise RowError(
            f"{where}: task {row_task!r}; expected one of {list(TASK_METRICS)} (or pass --task)"
        )
    fields = {k: v for k, v in record.items() if k in (*_AUDIO_FIELDS, "text", "span")}
    for key in (*_AUDIO_FIELDS, "text"):
        if key in fields and not isinstance(fields[key], str):
            raise RowError(f"{where}: {key!r} must be a string, got {fields[key]!r}")
    if "audio" not in fields:
        raise RowError(f"{where}: no 'audio' (the output to score)")
    chosen = metrics or TASK_METRICS[row_task]
    for metric in chosen:
        missing = _needs(metric, row_task, fields)
        if missing:
            raise RowError(
                f"{where}: metric {metric} of task {row_task} needs {missing}; "
                "add it to the row or choose --metrics without it"
            )
    row = Row(where, row_task, tuple(chosen), {}, {}, text=fields.get("text"))
    row.id = str(record.get("id", record.get("utt_id", ""))) or None
    if "span" in fields:
        row.span = _span(where, fields["span"])
    if "sim" in chosen:
        row.sim_to = sim_source(row_task, fields)
    for key in _AUDIO_FIELDS:
        if key in fields:
            row.raw[key] = fields[key]
            row.paths[key] = _checked_audio(where, key, root / fields[key])
    row.sample_rate = audio_info(row.paths["audio"]).sample_rate
    if row.text is not None and ("wer" in chosen or "cer" in chosen):
        from nclm.eval.wer import normalize_english

        if not normalize_english(row.text):
            raise RowError(f"{where}: 'text' {row.text!r} is empty after normalisation; WER needs "
                           "a transcript")  # fmt: skip
    return row


def _span(where: str, span: object) -> tuple[float, float]:
    ok = isinstance(span, list) and len(span) == 2
    ok = ok and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in span)
    if not ok or not 0 <= span[0] < span[1]:
        raise RowError(f"{where}: 'span' {span!r}; expected [start, end] seconds, 0 <= start < end")
    return float(span[0]), float(span[1])


def _checked_audio(where: str, key: str, path: Path) -> Path:
    try:
        audio_info(path)
    except AudioError as e:
        raise RowError(f"{where}: {key}: {e}") from None
    return path
