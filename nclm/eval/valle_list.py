"""VALL-E's zero-shot TTS protocol on LibriSpeech test-clean (arXiv 2301.02111), as files.

    nclm eval valle-list --librispeech LibriSpeech/test-clean --out lists/valle
    nclm tts --lm LM --codec CODEC --batch lists/valle/cross_requests.jsonl
    nclm eval score lists/valle/cross_requests.jsonl --out lists/valle/cross_eval

Utterances of 4 to 10 s (inclusive, from the file headers) with a transcript are kept, sorted by
utterance id; nothing is random, so the lists are the same on every machine. Two settings:

- cross-utterance: the prompt is another utterance of the same speaker, the one whose duration
  is nearest `prompt_seconds` (3 s; ties broken by id), whole, with its transcript.
  `cross_requests.jsonl` holds `nclm tts --batch` requests {text, prompt, prompt_text, out}
  (`nclm eval score` reads them as tts rows: out is the audio, SIM against the prompt);
  `cross_rows.jsonl` the same as rows with the ground truth as `reference` and an `id`.
- continuation: the prompt is the first 3 s of the utterance itself, written to
  `prompts/<id>.wav`; `continuation_rows.jsonl` has {id, audio, text (the whole transcript),
  prompt, reference (the whole utterance), task}. VALL-E conditions on the whole transcript and
  continues the audio; `nclm tts` needs the prompt's own words instead, which are unknown without
  a forced aligner, so no requests are written for this setting.

Speakers with a single eligible utterance and nothing else to prompt with are left out of the
cross list (counted in the printed summary). Outputs go to `out` paths `wav/<setting>/<id>.wav`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from nclm.atomic import write_atomic
from nclm.audio.io import audio_info, load_audio, save_audio
from nclm.data.manifest import manifest_from_librispeech

MIN_SECONDS, MAX_SECONDS = 4.0, 10.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--librispeech", required=True, metavar="DIR", help="e.g. .../test-clean")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--prompt-seconds", type=float, default=3.0, metavar="S", help="(3.0)")


def run(args: argparse.Namespace) -> dict:
    counts = make_lists(args.librispeech, args.out, args.prompt_seconds)
    print(
        f"{counts['utterances']} utterances of {MIN_SECONDS:g}-{MAX_SECONDS:g} s from "
        f"{counts['speakers']} speakers; cross-utterance {counts['cross']} "
        f"({counts['no_prompt']} without another utterance), continuation "
        f"{counts['continuation']} -> {args.out}"
    )
    return counts


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def make_lists(
    root: str | os.PathLike, out: str | os.PathLike, prompt_seconds: float = 3.0
) -> dict:
    """Writes the files of the module docstring into `out`; returns counts."""
    if not 0 < prompt_seconds < MIN_SECONDS:
        raise ValueError(
            f"--prompt-seconds: expected 0 < S < {MIN_SECONDS:g}, got {prompt_seconds}"
        )
    out = Path(out)
    records = sorted(
        (r for r in manifest_from_librispeech(root) if r.get("text")), key=lambda r: r["utt_id"]
    )
    chosen = [r for r in records if MIN_SECONDS <= r["duration"] <= MAX_SECONDS]
    if not chosen:
        raise ValueError(
            f"--librispeech {root}: no transcribed utterances of {MIN_SECONDS:g}-{MAX_SECONDS:g} s"
        )
    by_speaker: dict[str, list[dict]] = {}
    for r in records:
        by_speaker.setdefault(r["speaker"], []).append(r)

    requests, cross_rows = [], []
    for r in chosen:
        others = [o for o in by_speaker[r["speaker"]] if o["utt_id"] != r["utt_id"]]
        if not others:
            continue
        prompt = min(others, key=lambda o: (abs(o["duration"] - prompt_seconds), o["utt_id"]))
        wav = f"wav/cross/{r['utt_id']}.wav"
        text, prompt_audio = r["text"], prompt["audio"]
        requests.append(
            {"text": text, "prompt": prompt_audio, "prompt_text": prompt["text"], "out": wav}
        )
        cross_rows.append(
            {"id": r["utt_id"], "audio": wav, "text": text, "prompt": prompt_audio,
             "reference": r["audio"], "task": "tts"}
        )  # fmt: skip

    continuation = []
    for r in chosen:
        clip = f"prompts/{r['utt_id']}.wav"
        sample_rate = audio_info(r["audio"]).sample_rate
        wav = load_audio(r["audio"], sample_rate)
        save_audio(out / clip, wav[: round(prompt_seconds * sample_rate)], sample_rate)
        continuation.append({"id": r["utt_id"], "audio": f"wav/continuation/{r['utt_id']}.wav",
                             "text": r["text"], "prompt": clip, "reference": r["audio"],
                             "task": "tts"})  # fmt: skip
    write_atomic(out / "cross_requests.jsonl", _jsonl(requests))
    write_atomic(out / "cross_rows.jsonl", _jsonl(cross_rows))
    write_atomic(out / "continuation_rows.jsonl", _jsonl(continuation))
    return {
        "utterances": len(chosen),
        "speakers": len({r["speaker"] for r in chosen}),
        "cross": len(requests),
        "no_prompt": len(chosen) - len(requests),
        "continuation": len(continuation),
    }
