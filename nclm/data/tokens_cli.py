"""`nclm tokens ...` (registered by nclm/cli.py):

nclm tokens extract --codec DIR --manifest train.jsonl --out DIR [--symbols symbols.json]
                    [--frontend auto|phonemes|graphemes] [--language en-us]
                    [--batch-size 16] [--shard-size 256] [--semantic DIR] [--no-progress]
nclm tokens semantic-fit --model DIR --layer 6 --manifest train.jsonl --out DIR [--k 500]
                    [--max-frames 250000] [--iters 100] [--seed 0] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse

from nclm.cli_args import command_group, set_command
from nclm.text.frontend import KINDS


def register(groups: argparse._SubParsersAction) -> None:
    help_text = "codec codes + text ids as ArrayRecord shards"
    sub = command_group(groups, "tokens", help_text, "tokens commands")
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
    p.add_argument(
        "--semantic",
        metavar="DIR",
        help="also store semantic ids on the codec frames, from this `semantic-fit` tokenizer",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    set_command(p, run_extract)

    p = sub.add_parser(
        "semantic-fit",
        help="k-means over HuBERT/WavLM features -> a semantic tokenizer for --semantic",
        description="Extracts the hidden states of --layer for utterances of the manifest (in a "
        "random order, up to --max-frames frames), fits k-means on them (JAX) and saves the "
        "tokenizer (semantic.json + centroids.npy). Needs torch and transformers.",
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="local transformers HubertModel/WavLMModel directory (config.json + weights)",
    )
    p.add_argument(
        "--layer", required=True, type=int, help="transformer layer, 1-based (HuBERT-base: 6)"
    )
    p.add_argument("--manifest", required=True, metavar="JSONL", help="utterances to fit on")
    p.add_argument("--out", required=True, metavar="DIR", help="tokenizer directory")
    p.add_argument("--k", type=int, default=500, help="clusters (500)")
    p.add_argument(
        "--max-frames",
        type=int,
        default=250_000,
        metavar="N",
        help="feature frames to fit on (250000: 83 min of audio at 50 Hz)",
    )
    p.add_argument("--iters", type=int, default=100, metavar="N", help="Lloyd iterations (100)")
    p.add_argument("--seed", type=int, default=0, help="utterance order and k-means++ (0)")
    p.add_argument("--device", help="torch device of the model (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    set_command(p, run_semantic_fit)


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
        semantic=args.semantic,
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
            + (f", semantic ids (k={summary['semantic']['num_clusters']})" if args.semantic else "")
        )
    return summary


def run_semantic_fit(args: argparse.Namespace) -> dict:
    from nclm.data.semantic import fit_semantic

    summary = fit_semantic(
        args.model,
        args.layer,
        args.manifest,
        args.out,
        k=args.k,
        max_frames=args.max_frames,
        iters=args.iters,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    print(
        f"{args.out}: k={summary['num_clusters']} centroids of layer {summary['layer']} "
        f"({summary['model_type']}, {summary['frame_rate']:g} Hz) from {summary['frames']} frames "
        f"of {summary['utterances']} utterances"
    )
    return summary
