"""`nclm tokens ...` (registered by nclm/cli.py):

nclm tokens extract --codec DIR --manifest train.jsonl --out DIR [--symbols symbols.json]
                    [--frontend auto|phonemes|graphemes] [--language en-us]
                    [--batch-size 16] [--shard-size 256] [--no-progress]
"""

from __future__ import annotations

import argparse

from nclm.text.frontend import KINDS


def register(groups: argparse._SubParsersAction) -> None:
    group = groups.add_parser("tokens", help="codec codes + text ids as ArrayRecord shards")
    group.set_defaults(command_parser=group)
    sub = group.add_subparsers(title="tokens commands", metavar="COMMAND")
    p = sub.add_parser(
        "extract",
        help="manifest (with texts) -> ArrayRecord shards for LM training",
        description="Rerunning the same command resumes: finished shards are kept. On several "
        "hosts each writes its share of the shards; the last to finish writes index.json.",
    )
    p.add_argument("--codec", required=True, metavar="DIR", help="codec checkpoint directory")
    p.add_argument("--manifest", required=True, metavar="JSONL", help="every record needs text")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument(
        "--symbols",
        metavar="JSON",
        help="reuse this symbol table (e.g. the train split's) instead of building one",
    )
    p.add_argument(
        "--frontend",
        choices=("auto", *KINDS),
        help="text frontend (default: auto = phonemes if espeak-ng works, else graphemes; "
        "with --symbols, the table's)",
    )
    p.add_argument("--language", default="en-us", help="espeak-ng language (en-us)")
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="clips per encode (16)")
    p.add_argument("--shard-size", type=int, default=256, metavar="N", help="records/shard (256)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=lambda args, _: run_extract(args), command_parser=p)


def run_extract(args: argparse.Namespace) -> dict:
    from nclm.data.tokens import extract_tokens

    summary = extract_tokens(
        args.codec,
        args.manifest,
        args.out,
        symbols=args.symbols,
        frontend=args.frontend,
        language=args.language,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        progress=not args.no_progress,
    )
    if summary["index"] is None:
        print(
            f"{args.out}: {summary['shards_done']} of {summary['num_shards']} shards done; "
            "index.json is written by the last host to finish"
        )
    else:
        hours = summary["num_frames"] / summary["frame_rate"] / 3600
        print(
            f"{args.out}: {summary['num_records']} utterances in {summary['num_shards']} "
            f"shard(s), {hours:.2f} h of codes, {summary['symbols']} symbols"
        )
    return summary
