"""`nclm codec eval`: how well a codec reconstructs the utterances of a manifest.

    nclm codec eval --codec runs/codec --manifest data/test.jsonl --out runs/codec/eval \
        [--max-items N] [--levels N] [--batch-size B]

    report = evaluate_codec(NeuralCodec.load("runs/codec"), "data/test.jsonl", out_dir="eval")

Each utterance is loaded at the codec's rate, encoded and decoded through `NeuralCodec` in batches
of similar length, trimmed to the input's length and scored against the input with PESQ-WB,
STOI, SI-SDR, mel distance and MCD (`nclm.audio.metrics`, which documents each). Codes are
counted over the whole set for codebook utilisation. With `out_dir`, two files are written
atomically:

    metrics.json        {codec_id, sample_rate, num_levels, codebook_size, bitrate_kbps,
                         manifest, num_items, total_seconds,
                         metrics: {name: {mean, std, count}},   over the utterances where defined
                         codebook_usage: {used, entropy_bits, perplexity, efficiency, ...},
                         items: [{utt_id, audio, seconds, <metric>: value, [warnings]}],
                         notes: {...}}
    codebook_usage.png  used fraction and perplexity per level

A metric that is undefined for an utterance (PESQ or STOI on silence or on too little speech) is
null in the JSON, the reason is in that item's `warnings`, and it is left out of the mean.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from nclm.atomic import write_atomic
from nclm.audio.io import AudioError, audio_info, load_audio
from nclm.data.manifest import read_manifest_lines, resolve_audio

if TYPE_CHECKING:  # jax (codec, mel spectra) is imported only when an evaluation runs
    from nclm.audio.metrics import CodebookUsage
    from nclm.codec.interface import NeuralCodec

METRICS = ("pesq_wb", "stoi", "si_sdr", "mel_distance", "mcd")  # per utterance, in report order
_LABELS = {
    "pesq_wb": "PESQ-WB",
    "stoi": "STOI",
    "si_sdr": "SI-SDR (dB)",
    "mel_distance": "mel L1",
    "mcd": "MCD (dB)",
}
NOTES = {
    "pesq_wb": "ITU-T P.862.2 wide-band MOS-LQO, resampled to 16 kHz (pesq); higher is better",
    "stoi": "Taal et al. 2011, 0..1 (pystoi); higher is better",
    "si_sdr": "scale-invariant SDR in dB, zero-mean signals; higher is better",
    "mel_distance": "mean |ln mel - ln mel'|, 100 mels, n_fft 1024, hop 256; lower is better",
    "mcd": "mel-cepstral distortion in dB, c1..c24 from 80-band log-mel spectra (not WORLD), "
    "5 ms frames, DTW-aligned; lower is better",
    "null": "metric undefined for that utterance (see the item's warnings); excluded from means",
}


class EvalError(ValueError):
    """An evaluation input or option that cannot be used; one line naming it."""


@dataclass(frozen=True)
class _Item:
    index: int  # position in the manifest selection
    utt_id: str
    audio: str  # as written in the manifest
    path: Path
    seconds: float  # from the header, for batching by length


# -- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--codec", required=True, metavar="DIR", help="codec checkpoint")
    parser.add_argument(
        "--manifest", required=True, metavar="JSONL", help="utterances to encode and score"
    )
    parser.add_argument(
        "--out", metavar="DIR", help="write metrics.json and codebook_usage.png here"
    )
    parser.add_argument(
        "--max-items", type=int, metavar="N", help="only the manifest's first N utterances"
    )
    parser.add_argument("--levels", type=int, metavar="N", help="use the first N levels only")
    parser.add_argument(
        "--batch-size", type=int, default=8, metavar="B", help="utterances per codec batch"
    )


def run(args: argparse.Namespace) -> dict:
    """Evaluates, prints a summary table (and where metrics.json went); returns the report."""
    report = evaluate_codec(
        args.codec,
        args.manifest,
        out_dir=args.out,
        max_items=args.max_items,
        batch_size=args.batch_size,
        num_levels=args.levels,
    )
    print(format_summary(report))
    if args.out is not None:
        print(f"metrics -> {Path(args.out) / 'metrics.json'}")
    return report


def format_summary(report: dict) -> str:
    seconds = report["total_seconds"]
    lines = [
        f"codec     {report['codec_id']}: {report['num_levels']} levels, "
        f"{report['bitrate_kbps']:g} kbps",
        f"manifest  {report['manifest']}: {report['num_items']} utterances, {seconds:.1f} s",
        "",
        f"{'metric':<13}{'mean':>9}{'std':>9}{'n':>6}",
    ]
    for name, stats in report["metrics"].items():
        mean, std = (
            ("-", "-") if stats["mean"] is None else (f"{stats['mean']:.3f}", f"{stats['std']:.3f}")
        )
        lines.append(f"{_LABELS[name]:<13}{mean:>9}{std:>9}{stats['count']:>6}")
    usage = report["codebook_usage"]
    lines += [
        "",
        f"codebooks     efficiency {usage['efficiency']:.3f} "
        f"(V = {usage['codebook_size']}, {usage['num_frames']} frames)",
        "  used %      " + " ".join(f"{100 * u:.1f}" for u in usage["used"]),
        "  perplexity  " + " ".join(f"{p:.1f}" for p in usage["perplexity"]),
    ]
    return "\n".join(lines)


# -- evaluation ---------------------------------------------------------------------------------


def evaluate_codec(
    codec: NeuralCodec | str | os.PathLike,
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    max_items: int | None = None,
    batch_size: int = 8,
    num_levels: int | None = None,
    progress: bool = True,
) -> dict:
    """Encodes, decodes and scores every selected utterance; see the module docstring for the
    report (also returned). `codec` may be a checkpoint directory (CheckpointError if it is not
    one); its weights are loaded once the manifest and every audio header have been checked."""
    from nclm.audio.metrics import code_counts, usage_from_counts

    _check_count(batch_size, "batch_size")
    if max_items is not None:
        _check_count(max_items, "max_items")
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise EvalError(f"{out_dir}: exists and is not a directory (expected an output directory)")
    if isinstance(codec, (str, os.PathLike)):
        from nclm.codec.checkpoint import read_codec_meta

        read_codec_meta(codec)  # a missing or foreign checkpoint fails before the audio is read
    items = _read_items(manifest_path, max_items)
    if isinstance(codec, (str, os.PathLike)):
        from nclm.codec.interface import NeuralCodec

        codec = NeuralCodec.load(codec)
    if num_levels is not None and not 1 <= num_levels <= codec.num_codebooks:
        raise EvalError(f"num_levels: expected 1..{codec.num_codebooks}, got {num_levels}")
    levels = num_levels or codec.num_codebooks

    scores: list[dict] = [{} for _ in items]
    counts = np.zeros((levels, codec.codebook_size), np.int64)
    with tqdm(total=len(items), unit="utt", desc="codec eval", disable=not progress) as bar:
        for item, ref, est, codes in _reconstruct(codec, items, batch_size, num_levels):
            counts += code_counts([codes], codec.codebook_size)
            scores[item.index] = _score_item(item, ref, est, codec.sample_rate)
            bar.update(1)

    undefined = sum(any(s[name] is None for name in METRICS) for s in scores)
    if undefined:
        warnings.warn(
            f"{undefined} of {len(items)} utterance(s) have undefined metrics (null, left out of "
            "the means); see their 'warnings' in the report",
            RuntimeWarning,
            stacklevel=2,
        )
    usage = usage_from_counts(counts)
    report = {
        "codec_id": codec.codec_id,
        "sample_rate": codec.sample_rate,
        "num_levels": levels,
        "codebook_size": codec.codebook_size,
        "bitrate_kbps": codec.bitrate(levels) / 1000,
        "manifest": str(manifest_path),
        "num_items": len(items),
        "total_seconds": sum(s["seconds"] for s in scores),
        "metrics": {name: _summarise([s[name] for s in scores]) for name in METRICS},
        "codebook_usage": usage.to_dict(),
        "items": scores,
        "notes": NOTES,
    }
    if out_dir is not None:
        out = Path(out_dir)
        write_atomic(out / "metrics.json", (json.dumps(report, indent=2, allow_nan=False) + "\n"))
        write_atomic(out / "codebook_usage.png", plot_usage(usage, codec.codec_id))
    return report


def _check_count(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EvalError(f"{name}: expected a positive integer, got {value!r}")


def _read_items(manifest_path: str | os.PathLike, max_items: int | None) -> list[_Item]:
    """The selected manifest records, every audio file's header checked."""
    lines = read_manifest_lines(manifest_path)[:max_items]
    if not lines:
        raise EvalError(f"{manifest_path}: no utterances, expected JSONL records")
    items = []
    for index, (number, record) in enumerate(lines):
        path = resolve_audio(manifest_path, record)
        try:
            info = audio_info(path)
        except AudioError as e:
            raise AudioError(f"{manifest_path}:{number}: {e}") from None
        seconds = info.num_samples / info.sample_rate
        items.append(_Item(index, record["utt_id"], record["audio"], path, seconds))
    return items


def _reconstruct(
    codec: NeuralCodec, items: list[_Item], batch_size: int, num_levels: int | None
) -> Iterator[tuple[_Item, np.ndarray, np.ndarray, np.ndarray]]:
    """(item, input float[S], reconstruction float[S], codes int[Q, T]) per utterance. Batches of
    similar length, all with the same number of rows (empty rows pad the last one), so that
    they share the codec's compiled programs."""
    load = lambda item: load_audio(item.path, codec.sample_rate)  # noqa: E731
    for batch in codec.encode_batches(
        items, load, lambda item: item.seconds, batch_size, num_levels
    ):
        decoded, samples = codec.decode(batch.codes, batch.frames)  # [B, T * hop]
        for i, (item, wav) in enumerate(zip(batch.items, batch.wavs, strict=True)):
            n = min(len(wav), int(samples[i]))
            yield item, wav[:n], decoded[i, :n], batch.codes[i, :, : batch.frames[i]]


def _score_item(item: _Item, ref: np.ndarray, est: np.ndarray, sample_rate: int) -> dict:
    """One utterance's metrics; RuntimeWarnings (undefined metrics) are kept in the record."""
    from nclm.audio import metrics

    functions = {
        "pesq_wb": metrics.pesq_wb,
        "stoi": metrics.stoi,
        "si_sdr": lambda ref, est, sample_rate: metrics.si_sdr(ref, est),
        "mel_distance": metrics.mel_distance,
        "mcd": metrics.mcd,
    }
    record = {"utt_id": item.utt_id, "audio": item.audio, "seconds": len(ref) / sample_rate}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in METRICS:
            record[name] = _finite(functions[name](ref, est, sample_rate))
    notes = []
    for w in caught:
        if issubclass(w.category, RuntimeWarning):
            notes.append(" ".join(str(w.message).split()))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if notes:
        record["warnings"] = notes
    return record


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _summarise(values: list[float | None]) -> dict:
    defined = np.array([v for v in values if v is not None], np.float64)
    if defined.size == 0:
        return {"mean": None, "std": None, "count": 0}
    return {"mean": float(defined.mean()), "std": float(defined.std()), "count": int(defined.size)}


# -- outputs ------------------------------------------------------------------------------------


def plot_usage(usage: CodebookUsage, title: str) -> bytes:
    """PNG: bars of the fraction of codes used and a line of perplexity 2^H per level. Drawn on
    an Agg canvas directly, so no pyplot state or global backend is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    levels = np.arange(1, len(usage.used) + 1)
    size = usage.codebook_size
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    used_ax, ppl_ax = fig.subplots(1, 2)
    used_ax.bar(levels, 100 * usage.used, color="tab:blue")
    used_ax.set(xlabel="level", ylabel="codes used at least once (%)", ylim=(0, 105))
    ppl_ax.plot(levels, usage.perplexity, "o-", color="tab:orange")
    ppl_ax.axhline(size, ls="--", color="gray")
    ppl_ax.annotate(f"V = {size}", (0.02, size), xycoords=("axes fraction", "data"), va="top")
    ppl_ax.set(xlabel="level", ylabel="perplexity $2^{H}$", yscale="log", ylim=(0.8, size * 1.6))
    if len(levels) <= 32:
        for ax in (used_ax, ppl_ax):
            ax.set_xticks(levels)
    fig.suptitle(f"{title}: {len(levels)} levels, efficiency {usage.efficiency:.3f}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
