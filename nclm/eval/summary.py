"""The summary of scored rows, written atomically as JSON and as a Markdown table.

    out/rows.jsonl    one scored row per line: the row's paths, task, id, `hypothesis` (what the
                      recognizer heard), each metric (null where undefined) and `warnings`
    out/summary.json  {rows_file, num_rows, evaluators: {kind: identity}, normalisation,
                       tasks: {task: {num_rows, metrics: {name: {mean, median, ci95, count,
                       [corpus]}}}}, notes, seconds and cpu_seconds: {load_evaluators,
                       <metric>: wall / process CPU seconds over all rows (wer includes the
                       recognition, cer reuses its transcript)}}
    out/summary.md    one table per task

`ci95` is the 95 % confidence interval of the mean, mean ± t(0.975, n − 1) · s / √n with the
sample standard deviation s (Student's t; null for fewer than two rows). For WER and CER,
`corpus` is the total errors over the total reference words (characters), the figure papers
report; `mean` is the average of per-row rates.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nclm.atomic import write_atomic
from nclm.eval.wer import NORMALISATION

COLUMNS = {  # metric column -> (label, better)
    "wer": ("WER", "lower"),
    "cer": ("CER", "lower"),
    "sim": ("SIM", "higher"),
    "dnsmos_ovrl": ("DNSMOS OVRL", "higher"),
    "dnsmos_sig": ("DNSMOS SIG", "higher"),
    "dnsmos_bak": ("DNSMOS BAK", "higher"),
    "dnsmos_p808": ("DNSMOS P.808", "higher"),
    "pesq_wb": ("PESQ-WB", "higher"),
    "stoi": ("STOI", "higher"),
    "si_sdr": ("SI-SDR (dB)", "higher"),
    "mel_distance": ("mel L1", "lower"),
    "mcd": ("MCD (dB)", "lower"),
    "mel_outside_edit": ("mel L1 outside edit", "lower"),
    "speech_left": ("speech left (VAD)", "lower"),
}
NOTES = {
    "wer": f"word error rate after the English normalisation {NORMALISATION} "
    "(nclm/eval/wer.py), aligned by jiwer; recognizer in evaluators.recognizer",
    "cer": "character error rate over the same normalised text, spaces included",
    "sim": "cosine of speaker embeddings, output vs the row's sim_to audio "
    "(evaluators.speaker_encoder); -1..1",
    "dnsmos": "DNSMOS P.835 SIG/BAK/OVRL and P.808, 1..5 (speechmos ONNX models)",
    "pesq_wb": "ITU-T P.862.2 wide-band, vs the reference at 16 kHz",
    "si_sdr": "dB vs the reference (in an sr row, the noise)",
    "mel_outside_edit": "mel L1 between original and output outside the edited span; ~0 is ideal",
    "speech_left": "fraction of 30 ms frames webrtcvad (mode 3) calls speech",
    "ci95": "95% confidence interval of the mean (Student t)",
    "null": "undefined for that row (see its warnings); excluded from the statistics",
}


def _t975(dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def statistics(values: list[float]) -> dict:
    x = np.asarray(values, np.float64)
    if x.size == 0:
        return {"mean": None, "median": None, "ci95": None, "count": 0}
    mean = float(x.mean())
    ci = None
    if x.size > 1:
        half = _t975(x.size - 1) * float(x.std(ddof=1)) / np.sqrt(x.size)
        ci = [mean - half, mean + half]
    return {"mean": mean, "median": float(np.median(x)), "ci95": ci, "count": int(x.size)}


def summarise(scored: list[dict], evaluators: dict, rows_file: str) -> dict:
    tasks: dict = {}
    for task in dict.fromkeys(r["task"] for r in scored):
        rows = [r for r in scored if r["task"] == task]
        metrics = {}
        for name in COLUMNS:
            if not any(name in r for r in rows):
                continue
            metrics[name] = statistics([r[name] for r in rows if r.get(name) is not None])
            if name in ("wer", "cer"):
                done = [r for r in rows if r.get(name) is not None]
                length = sum(r[f"{name}_len"] for r in done)
                errors = sum(r[f"{name}_errors"] for r in done)
                metrics[name]["corpus"] = errors / length if length else None
        tasks[task] = {"num_rows": len(rows), "metrics": metrics}
    return {
        "rows_file": rows_file,
        "num_rows": len(scored),
        "evaluators": evaluators,
        "normalisation": NORMALISATION,
        "tasks": tasks,
        "notes": NOTES,
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(report: dict) -> str:
    lines = [f"# nclm eval: {report['rows_file']} ({report['num_rows']} rows)", ""]
    for task, section in report["tasks"].items():
        lines += [
            f"## {task} ({section['num_rows']} rows)",
            "",
            "| metric | mean | median | 95% CI | n | corpus |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, s in section["metrics"].items():
            label, better = COLUMNS[name]
            ci = "-" if s["ci95"] is None else f"{s['ci95'][0]:.3f} .. {s['ci95'][1]:.3f}"
            corpus = _fmt(s["corpus"]) if "corpus" in s else ""
            lines.append(
                f"| {label} ({better} is better) | {_fmt(s['mean'])} | {_fmt(s['median'])} | "
                f"{ci} | {s['count']} | {corpus} |"
            )
        lines.append("")
    lines.append("Evaluators:")
    for kind, ident in report["evaluators"].items():
        lines.append(
            f"- {kind}: {ident['name']} ({ident['package']} {ident['version']}), "
            f"{ident['weights']}, sha256 {ident['sha256']}"
        )
    lines.append(f"- text normalisation: {report['normalisation']} (nclm/eval/wer.py)")
    if "seconds" in report:
        spent = ", ".join(
            f"{name} {s:.1f} ({report['cpu_seconds'][name]:.1f})"
            for name, s in report["seconds"].items()
        )
        lines.append(f"- wall (CPU) seconds: {spent}")
    return "\n".join(lines) + "\n"


def write_report(report: dict, scored: list[dict], out: Path) -> None:
    rows = "".join(json.dumps(r, allow_nan=False) + "\n" for r in scored)
    write_atomic(out / "rows.jsonl", rows)
    write_atomic(out / "summary.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    write_atomic(out / "summary.md", markdown(report))
