"""`nclm data ...` subcommands, as argument registrars and runners for the main CLI to wire:

    nclm data manifest --layout folder|librispeech|libritts|vctk ROOT --out DIR [--valid N]
                       [--test N] [--seed S]
    nclm data synth --out DIR [--speakers N] [--utterances M] [--seed S] [--sample-rate HZ]
                    [--valid N --test N] [--workers W] [--no-flite]

`run_*` validate their arguments before writing anything, raise ValueError subclasses with one
line on failure, print a short summary to stdout and return it as a dict.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nclm.data.manifest import (
    SPLITS,
    ManifestError,
    manifest_from_folder,
    manifest_from_librispeech,
    manifest_from_vctk,
    split_by_speaker,
    write_manifest,
)
from nclm.data.synth import SynthError, check_synth_programs, synth_corpus

LAYOUTS = {
    "folder": manifest_from_folder,
    "librispeech": manifest_from_librispeech,
    "libritts": manifest_from_librispeech,
    "vctk": manifest_from_vctk,
}


def add_manifest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--layout",
        required=True,
        choices=sorted(LAYOUTS),
        help="folder: SPEAKER/*.wav (any depth, speaker = parent folder); librispeech/libritts: "
        "SPEAKER/CHAPTER/...; vctk: wav48_silence_trimmed/ or wav48/ with txt/",
    )
    parser.add_argument("root", metavar="ROOT", help="the corpus directory")
    parser.add_argument("--out", required=True, metavar="DIR", help="writes train/valid/test.jsonl")
    parser.add_argument("--valid", type=int, default=1, metavar="N", help="valid speakers (1)")
    parser.add_argument("--test", type=int, default=1, metavar="N", help="test speakers (1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the speaker split (0)")


def run_manifest(args: argparse.Namespace) -> dict:
    root, out = Path(args.root), Path(args.out)
    if args.layout not in LAYOUTS:
        raise ManifestError(f"--layout: expected one of {', '.join(sorted(LAYOUTS))}")
    if not root.is_dir():
        raise ManifestError(f"{root}: no such corpus directory")
    if out.exists() and not out.is_dir():
        raise ManifestError(f"--out {out}: exists and is not a directory")
    for name in ("valid", "test"):
        if getattr(args, name) < 0:
            raise ManifestError(f"--{name}: expected a speaker count >= 0")
    skipped: list = []
    records = LAYOUTS[args.layout](root, skipped=skipped)
    splits = split_by_speaker(records, valid=args.valid, test=args.test, seed=args.seed)
    summary = {"skipped_files": len(skipped)}
    for name in SPLITS:
        path = out / f"{name}.jsonl"
        write_manifest(path, splits[name])
        hours = sum(r["duration"] for r in splits[name]) / 3600
        speakers = len({r["speaker"] for r in splits[name]})
        summary[name] = {"utterances": len(splits[name]), "speakers": speakers, "hours": hours}
        print(f"{path}: {len(splits[name])} utterances, {speakers} speakers, {hours:.2f} h")
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s); first: {skipped[0][1]}")
    return summary


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="corpus directory to write")
    parser.add_argument("--speakers", type=int, default=24, metavar="N", help="speakers (24)")
    parser.add_argument(
        "--utterances", type=int, default=20, metavar="M", help="utterances per speaker (20)"
    )
    parser.add_argument("--seed", type=int, default=0, help="voices, split and sentences (0)")
    parser.add_argument("--sample-rate", type=int, default=16000, metavar="HZ", help="(16000)")
    parser.add_argument(
        "--valid", type=int, metavar="N", help="valid speakers (default: 1 per 12, at least 1)"
    )
    parser.add_argument("--test", type=int, metavar="N", help="test speakers (as --valid)")
    parser.add_argument("--workers", type=int, default=2, help="parallel synthesis jobs (2)")
    parser.add_argument("--no-flite", action="store_true", help="espeak-ng voices only")


def run_synth(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SynthError(f"--out {out}: exists and is not a directory")
    for name in ("speakers", "utterances", "workers"):
        if getattr(args, name) < 1:
            raise SynthError(f"--{name}: expected an integer >= 1, got {getattr(args, name)}")
    splits = None
    if args.valid is not None or args.test is not None:
        valid = 1 if args.valid is None else args.valid
        test = 1 if args.test is None else args.test
        if valid < 0 or test < 0 or valid + test >= args.speakers:
            raise SynthError(
                f"--valid {valid} --test {test}: need counts >= 0 leaving at least one of the "
                f"{args.speakers} speakers for training"
            )
        splits = (args.speakers - valid - test, valid, test)
    use_flite = False if args.no_flite else None
    check_synth_programs(use_flite)
    summary = synth_corpus(
        out,
        num_speakers=args.speakers,
        utterances_per_speaker=args.utterances,
        sample_rate=args.sample_rate,
        seed=args.seed,
        splits=splits,
        use_flite=use_flite,
        workers=args.workers,
    )
    counts = ", ".join(f"{name} {summary['utterances'][name]}" for name in SPLITS)
    print(
        f"{out}: {sum(summary['utterances'].values())} utterances ({counts}), "
        f"{summary['audio_seconds'] / 60:.1f} min of audio, {summary['failed']} failed, "
        f"in {summary['wall_seconds']:.1f} s"
    )
    return summary
