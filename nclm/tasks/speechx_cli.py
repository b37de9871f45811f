"""`nclm enhance | remove-speech | extract | edit` (SpeechX tasks) and `nclm simulate` (their
training data), registered by nclm/cli.py.

nclm enhance IN OUT --lm DIR --codec DIR [--text "..."] [--mode ar|masked|ar+masked]
nclm remove-speech IN OUT --lm DIR --codec DIR [--text "..."]
nclm extract IN --enroll SPEAKER.wav OUT --lm DIR --codec DIR [--text "..."]
nclm edit IN --span START:END --text "the full new transcript" OUT --lm DIR --codec DIR [--noisy]
nclm enhance --batch requests.jsonl --lm DIR --codec DIR     # lines {"in", "out", "text"?,
    [--batch-size 8 --devices N]                             #  "enroll"?, "span"?, "noisy"?}
nclm simulate --config configs/lm/speechx.py --codec DIR --manifest M.jsonl --out DIR
              --num-examples N [--symbols SYMBOLS.json] [--noise NOISE.jsonl]
              [--config.simulation.snr_db="(0.0, 10.0)"]

Every request is checked before any model work (nclm/tasks/speechx.py lists the checks); outputs
are written atomically. Batch paths are relative to the JSONL file's directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

_TASKS = {"enhance": "ns", "remove-speech": "sr", "extract": "tse", "edit": "cse"}
_KEYS = {"in", "out", "text", "enroll", "span", "noisy"}


def register(groups: argparse._SubParsersAction) -> None:
    helps = {
        "enhance": "noise suppression: the speech of a noisy recording",
        "remove-speech": "speech removal: the background of a recording, without the speech",
        "extract": "target speaker extraction: one speaker (given by --enroll) from a mixture",
        "edit": "speech editing: replace START:END seconds to say the new --text",
    }
    for command, help_text in helps.items():
        p = groups.add_parser(command, help=help_text, description=help_text)
        p.add_argument("inputs", nargs="*", metavar="IN OUT", help="input and output audio")
        p.add_argument("--lm", required=True, metavar="DIR", help="multi-task LM (lm.json)")
        p.add_argument("--codec", required=True, metavar="DIR", help="its codec")
        p.add_argument("--text", help="transcript (optional; edit: the full new transcript)")
        if command == "extract":
            p.add_argument("--enroll", metavar="SPEAKER.wav", help="1-10 s of the target voice")
        if command == "edit":
            p.add_argument("--span", metavar="START:END", help="seconds to replace")
            p.add_argument("--noisy", action="store_true", help="keep the background (NSE)")
        p.add_argument("--batch", metavar="REQUESTS.jsonl", help="many requests, one per line")
        p.add_argument("--mode", default="ar", choices=["ar", "masked", "ar+masked"])
        p.add_argument("--temperature", type=float, default=0.0, help="AR sampling; 0 = greedy")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
        p.add_argument("--batch-size", type=int, default=8, help="requests decoded at once (8)")
        p.add_argument(
            "--devices",
            type=int,
            help="local devices a batch's rows spread over (default: all; 1 = one device)",
        )
        p.set_defaults(
            func=lambda args, _, c=command: run(c, args), command_parser=p, intermixed=True
        )
    p = groups.add_parser("simulate", help="simulated SpeechX training examples as tokens")
    p.add_argument("--config", required=True, help="configs/lm/speechx.py (its `simulation`)")
    p.add_argument("--codec", required=True, metavar="DIR")
    p.add_argument("--manifest", required=True, metavar="M.jsonl", help="speech with transcripts")
    p.add_argument("--symbols", metavar="SYMBOLS.json", help="the TTS corpus's symbol table")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--num-examples", type=int, required=True)
    p.add_argument(
        "--noise",
        metavar="NOISE.jsonl",
        help="recorded noise too: a manifest of any audio (nclm data manifest --layout folder "
        "MUSAN/noise --out DIR --valid 0 --test 0, then DIR/train.jsonl); adds the kind "
        "'recorded' to simulation.noise_kinds",
    )
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=_simulate, command_parser=p, accepts_overrides=True)


def requests_of(command: str, args: argparse.Namespace) -> list:
    """TaskRequests from the options or the --batch file; errors name the option or line."""
    from nclm.tasks.speechx import TaskRequest, parse_span

    noisy = getattr(args, "noisy", False)
    task = "nse" if command == "edit" and noisy else _TASKS[command]
    if args.batch:
        if args.inputs:
            raise ValueError(f"nclm {command}: give IN OUT or --batch, not both")
        return _batch(command, args.batch)
    if len(args.inputs) != 2:
        raise ValueError(f"nclm {command}: expected IN OUT (two audio paths), got {args.inputs}")
    span = getattr(args, "span", None)
    return [
        TaskRequest(
            task,
            args.inputs[0],
            args.inputs[1],
            args.text,
            getattr(args, "enroll", None),
            parse_span(span) if span is not None else None,
        )
    ]


def _batch(command: str, path: str) -> list:
    from nclm.data.manifest import jsonl_records
    from nclm.tasks.speechx import TaskRequest, parse_span

    if not Path(path).is_file():
        raise ValueError(f"--batch {path}: no such file")
    root, out = Path(path).parent, []
    for number, record in jsonl_records(path, Path(path).read_text(encoding="utf-8"), ValueError):
        where = f"{path}:{number}"
        if not isinstance(record, dict) or not {"in", "out"} <= set(record):
            raise ValueError(f"{where}: expected an object with 'in' and 'out' (and {_KEYS})")
        unknown = sorted(set(record) - _KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; expected {sorted(_KEYS)}")
        task = "nse" if command == "edit" and record.get("noisy") else _TASKS[command]
        enroll = record.get("enroll")
        span = record.get("span")
        out.append(
            TaskRequest(
                task,
                root / record["in"],
                root / record["out"],
                record.get("text"),
                root / enroll if enroll else None,
                parse_span(span, f"{where}: span") if span is not None else None,
                where,
            )
        )
    if not out:
        raise ValueError(f"--batch {path}: no requests (expected JSON lines)")
    return out


def run(command: str, args: argparse.Namespace) -> None:
    from nclm.decode.sampling import SamplingConfig
    from nclm.tasks.cli import _check_outputs
    from nclm.tasks.speechx import SpeechXRunner

    requests = requests_of(command, args)
    _check_outputs([Path(r.out) for r in requests], args.batch)
    runner = SpeechXRunner(args.lm, args.codec, args.dtype, args.batch_size, args.devices)
    checked = runner.check(requests)
    for line in runner.run(checked, args.mode, args.seed, SamplingConfig(args.temperature)):
        print(line)


def _simulate(args: argparse.Namespace, overrides: list[str]) -> None:
    from nclm.config import ConfigError, load_config
    from nclm.tasks.simulate import SimConfig
    from nclm.tasks.simulate_shards import simulate_tokens

    cfg = load_config(args.config, overrides)
    if "simulation" not in cfg:
        raise ConfigError(f"--config {args.config}: has no 'simulation' section")
    sim = cfg.simulation.to_dict()
    sim = {k: tuple(v) if isinstance(v, list) else v for k, v in sim.items()}
    if "data" in cfg and "text_buckets" in cfg.data:  # draw what the LM's largest buckets hold
        budget = {
            "max_prefix": max(cfg.data.text_buckets),
            "max_frames": max(cfg.data.frame_buckets),
        }
        sim = {**budget, **sim}
    if args.noise:
        sim["noise_manifest"] = args.noise
        sim["noise_kinds"] = tuple(dict.fromkeys((*sim.get("noise_kinds", ()), "recorded")))
    summary = simulate_tokens(
        args.codec,
        args.manifest,
        args.out,
        args.num_examples,
        seed=cfg.seed,
        symbols=args.symbols,
        cfg=SimConfig(**sim),
        shard_size=args.shard_size,
        batch_size=args.batch_size,
    )
    print(f"simulated {args.num_examples} examples in {args.out}: {summary.get('counts')}")
