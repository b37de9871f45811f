"""`nclm tts`: speech from text in the voice of a prompt (registered by nclm/cli.py).

nclm tts --lm DIR --codec DIR --text "..." --prompt voice.wav --prompt-text "..." --out out.wav
         [--temperature 1.0 --top-k 0 --top-p 1.0 --ras --seed 0 --max-seconds S --resample]
nclm tts --lm DIR --codec DIR --batch requests.jsonl [--batch-size 8 ...]

requests.jsonl holds one {"text", "prompt", "prompt_text", "out"} object per line; relative paths
are relative to the file's directory. Batch mode decodes sentences of the same shape bucket
together (nclm/lm/tts.py says how text becomes sentences, ids and frames, and the limits).
Every request is checked before any model work; each output is the generated speech only, written
atomically at the codec's sample rate.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

_KEYS = ("text", "prompt", "prompt_text", "out")


def register(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser(
        "tts",
        help="text to speech in the voice of a prompt (AR + NAR codec LM)",
        description="Writes the generated speech (not the prompt) at the codec's sample rate.",
    )
    p.add_argument("--lm", required=True, metavar="DIR", help="exported LM checkpoint (lm.json)")
    p.add_argument("--codec", required=True, metavar="DIR", help="the codec the LM was trained on")
    p.add_argument("--text", help="what to say; split into sentences after . ! ? ;")
    p.add_argument("--prompt", metavar="WAV", help="a few seconds of the voice to imitate")
    p.add_argument("--prompt-text", help="the transcript of --prompt")
    p.add_argument("--out", metavar="OUT.wav", help="output audio (format from the extension)")
    p.add_argument(
        "--batch",
        metavar="REQUESTS.jsonl",
        help='many requests: lines {"text", "prompt", "prompt_text", "out"}',
    )
    p.add_argument("--batch-size", type=int, default=8, help="sentences decoded at once (8)")
    p.add_argument("--temperature", type=float, default=1.0, help="AR sampling; 0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="AR top-k filter; 0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="AR nucleus filter; 1 = off")
    p.add_argument("--ras", action="store_true", help="VALL-E 2 repetition-aware sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-seconds",
        type=float,
        metavar="S",
        help="most speech per sentence (default: from the text length and the model's limit)",
    )
    p.add_argument(
        "--resample",
        action="store_true",
        help="resample a prompt at another rate to the codec's (default: refuse it)",
    )
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.set_defaults(func=lambda args, _: run(args), command_parser=p)


def run(args: argparse.Namespace) -> None:
    from nclm.decode.sampling import SamplingConfig

    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.ras)
    requests, outs = _batch_requests(args.batch) if args.batch else _single_request(args)
    _check_outputs(outs, args.batch)

    from nclm.audio.io import save_audio
    from nclm.lm.tts import Synthesizer

    synth = Synthesizer(args.lm, args.codec, args.dtype, args.batch_size)
    plan = synth.plan(requests, args.resample, args.max_seconds)
    wavs = synth.run(plan, sampling, args.seed)
    for out, wav in zip(outs, wavs):
        save_audio(out, wav, synth.sample_rate)
        print(f"wrote {out} ({len(wav) / synth.sample_rate:.2f} s at {synth.sample_rate} Hz)")


def _single_request(args: argparse.Namespace):
    from nclm.lm.tts import Request

    if args.text is None:
        raise ValueError("--text is required (or --batch REQUESTS.jsonl)")
    if args.prompt is None:
        raise ValueError("--prompt is required: a few seconds of the voice to imitate")
    if args.out is None:
        raise ValueError("--out is required: the audio file to write")
    return [Request(args.text, args.prompt, args.prompt_text or "")], [Path(args.out)]


def _batch_requests(path: str):
    """(requests, output paths) from a JSONL file; errors name the file and line."""
    from nclm.lm.tts import Request

    if not Path(path).is_file():
        raise ValueError(f"--batch {path}: no such file")
    requests, outs, root = [], [], Path(path).parent
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: invalid JSON ({e})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected an object with keys {list(_KEYS)}")
        missing = [k for k in _KEYS if not isinstance(record.get(k), str)]
        unknown = sorted(set(record) - set(_KEYS))
        if missing or unknown:
            problems = [f"missing {missing}"] * bool(missing) + [f"unknown {unknown}"] * bool(
                unknown
            )
            raise ValueError(f"{where}: expected string keys {list(_KEYS)}; {', '.join(problems)}")
        prompt, out = (root / record[k] for k in ("prompt", "out"))
        requests.append(Request(record["text"], prompt, record["prompt_text"], where=where))
        outs.append(out)
    if not requests:
        raise ValueError(f"--batch {path}: no requests (expected JSON lines)")
    return requests, outs


def _check_outputs(outs: list[Path], batch: str | None) -> None:
    from nclm.audio.io import output_format

    seen: set[Path] = set()
    for out in outs:
        output_format(out)
        if out.is_dir():
            raise ValueError(f"{out}: is a directory, expected an audio file to write")
        if out.resolve() in seen:
            raise ValueError(f"--batch {batch}: {out} is the output of two requests")
        seen.add(out.resolve())
