"""`nclm eval`: score generated or transformed speech (registered by nclm/cli.py).

    nclm eval score gen/rows.jsonl --out gen/eval [--task tts] [--metrics wer,sim,dnsmos]
        [--recognizer pocketsphinx|MODEL_DIR] [--speaker-encoder resemblyzer|MODEL_DIR]
        [--max-rows N] [--no-progress]
    nclm eval valle-list --librispeech LibriSpeech/test-clean --out lists/valle

`score` reads rows (nclm/eval/rows.py: fields per task), prints the summary table and writes
rows.jsonl, summary.json and summary.md into --out (nclm/eval/summary.py). `valle-list` writes
VALL-E's LibriSpeech test-clean protocol (nclm/eval/valle_list.py) as `nclm tts --batch` requests
and matching rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nclm.cli_args import add_command, command_group


def register(groups: argparse._SubParsersAction) -> None:
    from nclm.eval import valle_list

    help_text = "score generated speech (WER, SIM, DNSMOS, PESQ, ...)"
    sub = command_group(groups, "eval", help_text, "eval commands")
    help_text = "per-row metrics and a summary for a JSONL of rows (or nclm tts --batch requests)"
    description = (
        "Rows: {audio, text?, prompt?, reference?, enrol?, span?, task}; paths relative to the "
        "JSONL. Evaluators run offline (pip install 'nclm[eval]')."
    )
    add_command(sub, "score", help_text, add_score_arguments, run_score, description=description)
    help_text = "VALL-E's LibriSpeech test-clean lists (4-10 s; continuation and cross-utterance)"
    add_command(sub, "valle-list", help_text, valle_list.add_arguments, valle_list.run)


def add_score_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rows", metavar="ROWS.jsonl")
    p.add_argument("--out", metavar="DIR", help="write rows.jsonl, summary.json, summary.md here")
    p.add_argument("--task", help="task of rows without one: tts, ns, sr, tse, edit")
    p.add_argument("--metrics", metavar="M,M,...", help="instead of each task's defaults")
    p.add_argument(
        "--recognizer",
        default="pocketsphinx",
        metavar="pocketsphinx|DIR",
        help="ASR for WER: pocketsphinx (default) or a local transformers CTC/Whisper directory",
    )
    p.add_argument(
        "--speaker-encoder",
        default="resemblyzer",
        metavar="resemblyzer|DIR",
        help="speaker embeddings for SIM: resemblyzer (default) or a local WavLMForXVector dir",
    )
    p.add_argument("--max-rows", type=int, metavar="N", help="only the first N rows")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_score(args: argparse.Namespace) -> dict:
    from nclm.eval.rows import parse_metrics
    from nclm.eval.runner import evaluate_rows
    from nclm.eval.summary import markdown

    report = evaluate_rows(
        args.rows,
        out_dir=args.out,
        task=args.task,
        metrics=parse_metrics(args.metrics),
        recognizer=args.recognizer,
        speaker_encoder=args.speaker_encoder,
        max_rows=args.max_rows,
        progress=not args.no_progress,
    )
    print(markdown(report), end="")
    if args.out is not None:
        print(f"rows -> {Path(args.out) / 'rows.jsonl'}, summary -> {Path(args.out)}/summary.md")
    return report
