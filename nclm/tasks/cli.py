"""`nclm tts`: speech from text in the voice of a prompt (registered by nclm/cli.py).

nclm tts --lm DIR --codec DIR --text "..." --prompt voice.wav --prompt-text "..." --out out.wav
         [--temperature 1.0 --top-k 0 --top-p 1.0 --ras --seed 0 --max-seconds S --resample]
nclm tts --lm DIR --codec DIR --batch requests.jsonl [--batch-size 8 --devices N ...]
nclm tts ... --mode masked [--target-seconds S] [--iterations 16,1 --guidance ramp_up
         --guidance-max 2.0 --guidance-min 0.0 --span 1 --choice-temperature 1.0
         --masked-temperature 1.0]
nclm tts ... --mode ar+masked [--iterations ...]      # AR level 1, masked levels 2..Q

--mode ar (VALL-E AR + NAR) is the default; masked (SoundStorm: every level by iterative
unmasking, length from --target-seconds or the prompt's speaking rate) and ar+masked (AR level 1,
then masked levels 2..Q instead of the NAR) take the masked-decoding flags, which are
`MaskedSchedule` fields (nclm/decode/masked.py); --top-k/--top-p filter both decoders.

requests.jsonl holds one {"text", "prompt", "prompt_text", "out"} object per line; relative paths
are relative to the file's directory. Batch mode decodes sentences of the same shape bucket
together (nclm/tasks/tts.py says how text becomes sentences, ids and frames, and the limits),
each batch spread over up to --devices local devices (default all; 1: one device), data-parallel.
Every request is checked before any model work; each output is the generated speech only, written
atomically at the codec's sample rate.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nclm.cli_args import set_command

_KEYS = ("text", "prompt", "prompt_text", "out")
# masked-decoding flags (args attribute) -> MaskedSchedule field; None: not given (its default)
_SCHEDULE = {
    "iterations": "iterations",
    "guidance": "guidance",
    "guidance_max": "guidance_max",
    "guidance_min": "guidance_min",
    "span": "span",
    "choice_temperature": "temperature",
    "masked_temperature": "sample_temperature",
}


def register(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser(
        "tts",
        help="text to speech in the voice of a prompt (AR + NAR or masked codec LM)",
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
    p.add_argument(
        "--devices",
        type=int,
        metavar="N",
        help="local devices a batch's rows spread over (default: all; 1 = one device)",
    )
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
    _masked_arguments(p)
    set_command(p, run)


def _masked_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mode",
        default="ar",
        metavar="ar|masked|ar+masked",
        help="ar (default): AR + NAR (VALL-E); masked: every level by masked decoding "
        "(SoundStorm); ar+masked: AR level 1, masked levels 2..Q",
    )
    p.add_argument(
        "--target-seconds",
        type=float,
        metavar="S",
        help="--mode masked: speech per sentence (default: the prompt's frames per transcript "
        "token x the sentence's tokens)",
    )
    p.add_argument(
        "--iterations",
        metavar="N,N,...",
        help="masked iterations per level, the last repeating (16,1: 16 for level 1, 1 after)",
    )
    p.add_argument(
        "--guidance",
        metavar="KIND",
        help="classifier-free guidance: ramp_up (default, 0 -> max), ramp_down, constant, none",
    )
    p.add_argument(
        "--guidance-max", type=float, help="guidance w at its peak (2.0; 0 = conditional)"
    )
    p.add_argument("--guidance-min", type=float, help="ramp_down's final guidance w (0.0)")
    p.add_argument("--span", type=int, help="frames re-masked together (1; MAGNeT: 3)")
    p.add_argument(
        "--choice-temperature", type=float, help="Gumbel noise on the re-mask choice, τ0 (1.0)"
    )
    p.add_argument(
        "--masked-temperature",
        type=float,
        help="masked token sampling temperature, annealed to 0 per level (1.0)",
    )


def _schedule(args: argparse.Namespace):
    """The MaskedSchedule of the masked flags; errors name the flag."""
    from nclm.decode.masked import MaskedSchedule

    given = {name: getattr(args, name) for name in _SCHEDULE if getattr(args, name) is not None}
    if args.mode == "ar" and given:
        flag = "--" + next(iter(given)).replace("_", "-")
        raise ValueError(f"{flag} sets masked decoding: add --mode masked or --mode ar+masked")
    fields = {"top_k": args.top_k, "top_p": args.top_p}
    for name, value in given.items():
        flag = f"--{name.replace('_', '-')} {value}"
        if name == "iterations":
            try:
                value = tuple(int(n) for n in value.split(","))
            except ValueError:
                raise ValueError(
                    f"{flag}: expected integers per level separated by commas, e.g. 16,1"
                ) from None
        try:
            MaskedSchedule(**{_SCHEDULE[name]: value})
        except ValueError as e:
            raise ValueError(f"{flag}: {e}") from None
        fields[_SCHEDULE[name]] = value
    return MaskedSchedule(**fields)


def run(args: argparse.Namespace) -> None:
    from nclm.decode.sampling import SamplingConfig

    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.ras)
    schedule = _schedule(args)
    requests, outs = _batch_requests(args.batch) if args.batch else _single_request(args)
    _check_outputs(outs, args.batch)

    from nclm.audio.io import save_audio
    from nclm.tasks.tts import Synthesizer

    synth = Synthesizer(args.lm, args.codec, args.dtype, args.batch_size, args.devices)
    plan = synth.plan(requests, args.resample, args.max_seconds, args.mode, args.target_seconds)
    wavs = synth.run(plan, sampling, args.seed, schedule)
    for out, wav, passes in zip(outs, wavs, synth.passes):
        save_audio(out, wav, synth.sample_rate)
        how = f"; {passes} masked decoding passes" if args.mode != "ar" else ""
        print(f"wrote {out} ({len(wav) / synth.sample_rate:.2f} s at {synth.sample_rate} Hz{how})")


def _single_request(args: argparse.Namespace):
    from nclm.tasks.tts import Request

    if args.text is None:
        raise ValueError("--text is required (or --batch REQUESTS.jsonl)")
    if args.prompt is None:
        raise ValueError("--prompt is required: a few seconds of the voice to imitate")
    if args.out is None:
        raise ValueError("--out is required: the audio file to write")
    return [Request(args.text, args.prompt, args.prompt_text or "")], [Path(args.out)]


def _batch_requests(path: str):
    """(requests, output paths) from a JSONL file; errors name the file and line."""
    from nclm.tasks.tts import Request

    if not Path(path).is_file():
        raise ValueError(f"--batch {path}: no such file")
    requests, outs, root = [], [], Path(path).parent
    from nclm.data.manifest import jsonl_records

    text = Path(path).read_text(encoding="utf-8")
    for number, record in jsonl_records(path, text, ValueError):
        where = f"{path}:{number}"
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
