"""Token extraction: a manifest with transcripts -> ArrayRecord shards of codec codes + text ids.

    nclm tokens extract --codec runs/codec --manifest train.jsonl --out tokens/train
    nclm tokens extract --codec runs/codec --manifest valid.jsonl --out tokens/valid \
        --symbols tokens/train/symbols.json            # valid/test reuse the train split's table
    nclm tokens extract ... --semantic semantic/       # + k-means ids of HuBERT/WavLM features

    <out>/symbols.json                          the SymbolTable (with the text frontend)
    <out>/tokens-KKKKK-of-NNNNN.array_record    records [K * shard_size, (K + 1) * shard_size)
    <out>/tokens-KKKKK-of-NNNNN.json            that shard's lengths (and the run fingerprint)
    <out>/index.json                            everything the LM pipeline needs without reading
                                                records: codec facts, frontend, shard files,
                                                per-record text_len and frames per shard
    <out>/semantic/                             with --semantic: a copy of the tokenizer
                                                (semantic.json, centroids.npy)

A record is `msgpack_serialize({"codes": int16|int32[Q, T], "text": int32[L], "speaker": str,
"duration": float, "utt_id": str})`: real frames only, text ids without bos/eos; int16 when the
codebook fits. With --semantic a record also holds "semantic": int32[T], the tokenizer's ids
moved onto the codec's frames (nclm.data.semantic.to_frames), and index.json gains "semantic":
{"path": "semantic" (the copy, relative to <out>), "source" (the tokenizer given),
"num_clusters", "frame_rate" (of the ids before to_frames), "tokenizer_id"}. Without it neither
key exists, as in earlier extractions. Read a record back with `decode_record`.

Resuming: each shard (and its lengths file, written first) goes to a temporary name and is
renamed into place, so an existing shard whose lengths file carries this run's fingerprint
(codec id, manifest bytes, shard size, symbol table, semantic tokenizer) is complete and skipped
on a rerun; shards of another extraction in --out are an error rather than silently mixed.
Hosts split the shards (host i writes shards K with K % count == i); whichever host finds every
shard done writes index.json, so the last one to finish does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from functools import partial
from pathlib import Path

import numpy as np
from flax import serialization
from tqdm import tqdm

from nclm.atomic import atomic_path, write_atomic, write_dir_atomic
from nclm.audio.io import AudioError, audio_info, load_audio
from nclm.codec.checkpoint import CheckpointError, read_codec_meta
from nclm.codec.config import CodecConfig
from nclm.data.manifest import ManifestError, read_manifest_lines, resolve_audio
from nclm.text.frontend import make_frontend, normalize_text
from nclm.text.symbols import SymbolTable, UnknownSymbolError

logger = logging.getLogger(__name__)

FORMAT = "nclm-tokens"
VERSION = 1
INDEX, SYMBOLS, SEMANTIC = "index.json", "symbols.json", "semantic"
_PHONEMIZE_CHUNK = 512  # texts per phonemizer call: few calls, yet a moving progress bar


class TokensError(ValueError):
    """Unusable extraction inputs or output directory; one line naming the option or file."""


# -- records ------------------------------------------------------------------------------------


def encode_record(
    codes: np.ndarray,
    text: np.ndarray,
    speaker: str,
    duration: float,
    utt_id: str,
    semantic: np.ndarray | None = None,
) -> bytes:
    record = {
        "codes": np.ascontiguousarray(codes),
        "text": np.asarray(text, np.int32),
        "speaker": speaker,
        "duration": float(duration),
        "utt_id": utt_id,
    }
    if semantic is not None:
        record["semantic"] = np.asarray(semantic, np.int32)
    return serialization.msgpack_serialize(record)


def decode_record(data: bytes) -> dict:
    """-> {"codes": int[Q, T], "text": int32[L], "speaker", "duration", "utt_id"} (+ "semantic":
    int32[T] when extracted with a semantic tokenizer)."""
    return serialization.msgpack_restore(data)


def shard_name(k: int, num_shards: int) -> str:
    return f"tokens-{k:05d}-of-{num_shards:05d}.array_record"


def codes_dtype(codebook_size: int) -> np.dtype:
    return np.dtype(np.int16 if codebook_size <= np.iinfo(np.int16).max + 1 else np.int32)


# -- extraction -------------------------------------------------------------------------------


def extract_tokens(
    codec_dir: str | os.PathLike,
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    symbols: str | os.PathLike | None = None,
    frontend: str | None = None,
    language: str = "en-us",
    batch_size: int = 16,
    shard_size: int = 256,
    progress: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    semantic: str | os.PathLike | None = None,
) -> dict:
    """Writes the shards of this host (all of them on one host), then index.json once every
    shard exists. `frontend`: "auto" | "phonemes" | "graphemes" (default "auto", or the kind of
    `symbols`). `semantic`: a tokenizer directory of `nclm tokens semantic-fit`. Returns a
    summary dict."""
    import jax

    from nclm.data.semantic import SemanticTokenizer, check_tokenizer

    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    out = Path(out)
    cfg, codec_id = _check_inputs(codec_dir, manifest, out, symbols, batch_size, shard_size)
    sem_index = None
    if semantic is not None:
        sem_meta = check_tokenizer(semantic)  # a clear error before any work
        sem_index = {
            "path": SEMANTIC,  # the copy in --out
            "source": str(Path(semantic).absolute()),
            "num_clusters": sem_meta["num_clusters"],
            "frame_rate": sem_meta["frame_rate"],  # of the ids before `to_frames`
            "tokenizer_id": sem_meta["tokenizer_id"],
        }
    lines = read_manifest_lines(manifest)
    texts = _texts(manifest, lines)
    table, text_ids = _text_ids(manifest, lines, texts, symbols, frontend, language, progress)
    dtype = codes_dtype(cfg.codebook_size)
    sem_id = sem_index and sem_index["tokenizer_id"]
    fingerprint = _fingerprint(codec_id, manifest, shard_size, table, dtype, sem_id)
    num_shards = math.ceil(len(lines) / shard_size)
    _check_out(out, num_shards, fingerprint)
    if index == 0:
        table.save(out / SYMBOLS)
        if semantic is not None:
            write_dir_atomic(out / SEMANTIC, partial(_copy_tokenizer, Path(semantic)))

    mine = [k for k in range(num_shards) if k % count == index]
    todo = [k for k in mine if _lengths(out, k, num_shards, fingerprint) is None]
    shard_jobs = _shard_jobs(manifest, lines, text_ids, todo, shard_size, cfg.sample_rate)
    total = sum(min(shard_size, len(lines) - k * shard_size) for k in mine)
    done = total - sum(len(jobs) for jobs in shard_jobs.values())
    if todo:
        from nclm.codec.interface import NeuralCodec

        codec = NeuralCodec.load(codec_dir)
        tokenizer = SemanticTokenizer.load(semantic) if semantic is not None else None
        rows = min(batch_size, len(lines))  # same rows for every batch: one program per bucket
        with tqdm(
            total=total, initial=done, unit="utt", desc="tokens", disable=not progress
        ) as bar:
            for k in todo:
                jobs = shard_jobs[k]
                _write_shard(
                    out, k, num_shards, jobs, codec, tokenizer, rows, dtype, fingerprint, bar
                )
    return _finish(
        out, cfg, codec_id, table, dtype, num_shards, shard_size, fingerprint, manifest, sem_index
    )


def _copy_tokenizer(source: Path, tmp: Path) -> None:
    from nclm.data.semantic import CENTROIDS, META

    for name in (META, CENTROIDS):
        (tmp / name).write_bytes((source / name).read_bytes())


def _shard_jobs(manifest, lines, text_ids, shards, shard_size, sample_rate) -> dict:
    """{shard: [job]} for the shards to write, every audio header checked before any encoding."""
    out = {}
    for k in shards:
        out[k] = []
        for i in range(k * shard_size, min(len(lines), (k + 1) * shard_size)):
            n, record = lines[i]
            job = {"where": f"{manifest}:{n}", "path": resolve_audio(manifest, record)}
            try:
                info = audio_info(job["path"])
            except AudioError as e:
                raise AudioError(f"{job['where']}: {e}") from None
            job["samples"] = math.ceil(info.num_samples * sample_rate / info.sample_rate)
            job.update(utt_id=record["utt_id"], speaker=record["speaker"], text=text_ids[i])
            out[k].append(job)
    return out


def _check_inputs(codec_dir, manifest, out, symbols, batch_size, shard_size):
    for name, value in (("--batch-size", batch_size), ("--shard-size", shard_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TokensError(f"{name}: expected an integer >= 1, got {value!r}")
    meta = read_codec_meta(codec_dir)
    try:
        cfg = CodecConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{Path(codec_dir) / 'codec.json'}: invalid codec config ({e})"
        ) from None
    if not (Path(codec_dir) / "variables").is_dir():
        raise CheckpointError(f"{codec_dir}: codec checkpoint has no variables/ directory")
    if not Path(manifest).is_file():
        raise ManifestError(f"--manifest {manifest}: no such manifest file")
    if symbols is not None and not Path(symbols).is_file():
        raise TokensError(f"--symbols {symbols}: no such symbol table (expected symbols.json)")
    if out.exists() and not out.is_dir():
        raise TokensError(f"--out {out}: exists and is not a directory")
    return cfg, meta.get("codec_id", cfg.name)


def _texts(manifest, lines) -> list[str]:
    texts = []
    for n, record in lines:
        text = record.get("text")
        if text is None or not normalize_text(text):
            raise ManifestError(
                f"{manifest}:{n}: utterance {record['utt_id']!r} has no 'text'; token "
                "extraction needs a transcript for every record"
            )
        texts.append(text)
    if not texts:
        raise ManifestError(f"{manifest}: no records")
    return texts


def _text_ids(manifest, lines, texts, symbols, kind, language, progress):
    """(table, int32[L] per record): phonemize in a few large calls, build or reuse the table."""
    if symbols is not None:
        table = SymbolTable.load(symbols)
        if kind not in (None, "auto", table.frontend.kind):
            raise TokensError(
                f"--frontend {kind}: --symbols {symbols} was built with {table.frontend.kind}"
            )
        front = table.frontend
        if front.kind == "phonemes":
            make_frontend("phonemes", front.language)  # a clear error if espeak-ng is missing
    else:
        front = make_frontend(kind or "auto", language)
        table = None
    tokens = []
    with tqdm(total=len(texts), unit="utt", desc=front.kind, disable=not progress) as bar:
        for start in range(0, len(texts), _PHONEMIZE_CHUNK):
            tokens += front.tokens_batch(texts[start : start + _PHONEMIZE_CHUNK])
            bar.update(min(_PHONEMIZE_CHUNK, len(texts) - start))
    # the corpus's symbols plus the language's coverage list (phonemes only held-out text uses)
    table = table or SymbolTable.build([*tokens, front.coverage_tokens()], front)
    ids = []
    for (n, record), toks in zip(lines, tokens):
        where = f"{manifest}:{n} ({record['text']!r})"
        try:
            ids.append(table.encode(toks, where=where))
        except UnknownSymbolError as e:
            raise UnknownSymbolError(f"{e} (--symbols {symbols})") from None
    return table, ids


def _fingerprint(codec_id, manifest, shard_size, table, dtype, semantic_id=None) -> str:
    digest = hashlib.sha1(Path(manifest).read_bytes())
    for part in (codec_id, shard_size, json.dumps(table.to_dict(), sort_keys=True), dtype.name):
        digest.update(str(part).encode())
    if semantic_id is not None:  # absent: the fingerprint of extractions before semantic ids
        digest.update(f"semantic {semantic_id}".encode())
    return digest.hexdigest()[:16]


def _lengths_path(out: Path, k: int, num_shards: int) -> Path:
    return out / shard_name(k, num_shards).replace(".array_record", ".json")


def _lengths(out: Path, k: int, num_shards: int, fingerprint: str) -> dict | None:
    """The shard's lengths file if the shard is complete and of this run, else None."""
    side = _lengths_path(out, k, num_shards)
    if not (out / shard_name(k, num_shards)).is_file() or not side.is_file():
        return None
    try:
        lengths = json.loads(side.read_text())
    except json.JSONDecodeError:
        return None
    return (
        lengths if isinstance(lengths, dict) and lengths.get("fingerprint") == fingerprint else None
    )


def _check_out(out: Path, num_shards: int, fingerprint: str) -> None:
    for side in sorted(out.glob("tokens-*-of-*.json")):
        try:
            other = json.loads(side.read_text()).get("fingerprint")
        except (json.JSONDecodeError, AttributeError):
            other = None
        if other != fingerprint or not side.name.endswith(f"-of-{num_shards:05d}.json"):
            raise TokensError(
                f"--out {out}: holds shards of another extraction ({side.name}: other codec, "
                "manifest, shard size, symbols or semantic tokenizer); use a new --out or remove "
                "them"
            )


def _write_shard(out, k, num_shards, jobs, codec, tokenizer, rows, dtype, fingerprint, bar):
    records = [None] * len(jobs)
    for i, codes, num_samples in _encode_jobs(codec, jobs, rows):
        job = jobs[i]
        duration = num_samples / codec.sample_rate
        semantic = None
        if tokenizer is not None:  # from the file at the SSL model's rate, as semantic-fit reads
            try:
                wav = load_audio(job["path"], tokenizer.sample_rate)
            except AudioError as e:
                raise AudioError(f"{job['where']}: {e}") from None
            semantic = tokenizer.frame_tokens(
                wav, tokenizer.sample_rate, codes.shape[1], codec.frame_rate
            )
        records[i] = encode_record(
            codes.astype(dtype), job["text"], job["speaker"], duration, job["utt_id"], semantic
        )
        bar.update(1)
    lengths = {
        "fingerprint": fingerprint,
        "num_records": len(jobs),
        "text_len": [int(len(j["text"])) for j in jobs],
        "frames": [int(j["frames"]) for j in jobs],
    }
    from array_record.python.array_record_module import ArrayRecordWriter

    write_atomic(_lengths_path(out, k, num_shards), json.dumps(lengths) + "\n")
    with atomic_path(out / shard_name(k, num_shards), ".array_record") as tmp:
        writer = ArrayRecordWriter(tmp, "group_size:1")  # group 1: cheap random access
        for record in records:
            writer.write(record)
        writer.close()


def _encode_jobs(codec, jobs, rows):
    """Yields (job index, codes int32[Q, T] of real frames, samples) per job, in length order."""

    def load(i):
        try:
            return load_audio(jobs[i]["path"], codec.sample_rate)
        except AudioError as e:
            raise AudioError(f"{jobs[i]['where']}: {e}") from None

    indices = range(len(jobs))
    for batch in codec.encode_batches(indices, load, lambda i: jobs[i]["samples"], rows):
        for row, (i, wav) in enumerate(zip(batch.items, batch.wavs)):
            jobs[i]["frames"] = int(batch.frames[row])
            yield i, batch.codes[row, :, : batch.frames[row]], len(wav)


def index_fields(cfg, codec_id: str, table, dtype, shards: list[dict]) -> dict:
    """What every token directory's index says: format, codec, symbols, and per shard its
    records' text and frame lengths (the bucketing reads them instead of the records)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "codec_id": codec_id,
        "codec_name": cfg.name,
        "sample_rate": cfg.sample_rate,
        "frame_rate": cfg.frame_rate,
        "hop_length": cfg.hop_length,
        "num_codebooks": cfg.num_codebooks,
        "codebook_size": cfg.codebook_size,
        "codes_dtype": dtype.name,
        "frontend": table.frontend.to_dict(),
        "symbols": SYMBOLS,
        "num_symbols": len(table),
        "num_records": sum(s["num_records"] for s in shards),
        "num_frames": sum(sum(s["frames"]) for s in shards),
        "shards": [
            {
                "file": shard_name(k, len(shards)),
                "num_records": s["num_records"],
                "text_len": s["text_len"],
                "frames": s["frames"],
            }
            for k, s in enumerate(shards)
        ],
    }


def _finish(
    out, cfg, codec_id, table, dtype, num_shards, shard_size, fingerprint, manifest, sem_index
):
    shards = [_lengths(out, k, num_shards, fingerprint) for k in range(num_shards)]
    summary = {"out": str(out), "num_shards": num_shards, "symbols": len(table)}
    summary["shards_done"] = sum(s is not None for s in shards)
    if summary["shards_done"] < num_shards:
        summary["index"] = None  # another host is still writing; the last one writes the index
        return summary
    index = {
        **index_fields(cfg, codec_id, table, dtype, shards),
        "manifest": str(Path(manifest).absolute()),
        "shard_size": shard_size,
        "num_text_tokens": sum(sum(s["text_len"]) for s in shards),
    }
    if sem_index is not None:
        index["semantic"] = summary["semantic"] = sem_index
    write_atomic(out / INDEX, json.dumps(index) + "\n")
    summary["index"] = str(out / INDEX)
    summary.update(
        {k: index[k] for k in ("num_records", "num_frames", "frame_rate", "num_text_tokens")}
    )
    return summary
