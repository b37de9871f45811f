"""Simulated SpeechX examples, encoded once, as a token corpus the LM pipeline reads.

    simulate_tokens("runs/codec", "data/train.jsonl", "tokens/speechx", num_examples=2000,
                    seed=0, symbols="tokens/train/symbols.json")

writes the layout of `nclm tokens extract` (shards, per-shard lengths files, index.json) whose
records also hold the SpeechX layout (nclm.lm.speechx):

    codes int[Q, T]          the target codes            text int32[L]  the transcript (or [])
    prefix int32[Lp]         [BOS, text, EOS, acoustic prompt] slot ids
    prefix_kind int8[Lp]     text / frame / task token   prefix_codes int[Q, Lp]
    task int                 index in TASKS              target_start int

and index.json gains "tasks": {"names": TASKS, "seed", "simulation": SimConfig, counts}. The
index's per-record `text_len` is len(prefix) - 2, so the pipeline's buckets (text + BOS + EOS)
hold the whole prefix.

Precomputed, not encoded on the fly: the codec encode costs more than a tiny LM step on the CPU
(BENCHMARKS.md, "SpeechX simulation"), and a shard is then a pure function of (corpus, codec,
seed, config), so resuming, host splitting (shard K on host K % count) and byte-identical reruns
come from the token extraction's machinery: a shard whose lengths file carries this run's
fingerprint is complete and skipped. The price: the variants are fixed (num_examples of them)
instead of fresh each epoch; make num_examples a few times the corpus.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
from flax import serialization
from tqdm import tqdm

from nclm.atomic import atomic_path, write_atomic
from nclm.audio.io import AudioError, load_audio
from nclm.data.manifest import read_manifest_lines, resolve_audio
from nclm.data.tokens import (
    INDEX,
    SYMBOLS,
    TokensError,
    _check_inputs,
    _check_out,
    _lengths,
    _lengths_path,
    _text_ids,
    _texts,
    codes_dtype,
    index_fields,
    shard_name,
)
from nclm.lm.speechx import TASKS, layout_example
from nclm.tasks.recorded_noise import RecordedNoise
from nclm.tasks.simulate import SimConfig, Utterance, simulate


def load_corpus(manifest, table_path, sample_rate: int, progress=True, frontend=None):
    """(table, [Utterance]) of a manifest with transcripts, audio at `sample_rate`; text ids by
    the symbol table at `table_path` (e.g. the TTS corpus's) or a new one of `frontend`."""
    lines = read_manifest_lines(manifest)
    texts = _texts(manifest, lines)
    table, ids = _text_ids(manifest, lines, texts, table_path, frontend, "en-us", False)
    corpus = []
    for (n, record), text in tqdm(
        list(zip(lines, ids)), unit="utt", desc="load", disable=not progress
    ):
        try:
            wav = load_audio(resolve_audio(manifest, record), sample_rate)
        except AudioError as e:
            raise AudioError(f"{manifest}:{n}: {e}") from None
        corpus.append(Utterance(wav, text, record["speaker"]))
    return table, corpus


def _fingerprint(codec_id, manifest, table, seed, cfg, shard_size, num_examples) -> str:
    digest = hashlib.sha1(Path(manifest).read_bytes())
    if cfg.noise_manifest:  # its list of files, not only its path
        digest.update(Path(cfg.noise_manifest).read_bytes())
    facts = (codec_id, json.dumps(table.to_dict(), sort_keys=True), seed, shard_size, num_examples)
    for part in (*facts, json.dumps(cfg.to_dict(), sort_keys=True), "speechx"):
        digest.update(str(part).encode())
    return digest.hexdigest()[:16]


def encode_examples(codec, sims: list, batch_size: int) -> list:
    """nclm.lm.speechx.Example per simulated example: every part and target encoded in
    length-sorted batches (one compiled program per bucket)."""
    waves = [(e, name) for e, s in enumerate(sims) for name in (*s.parts, "<target>")]

    def load(item):
        e, name = item
        return sims[e].target if name == "<target>" else sims[e].parts[name]

    codes: dict = {}
    for batch in codec.encode_batches(waves, load, lambda item: len(load(item)), batch_size):
        for row, item in enumerate(batch.items):
            codes[item] = batch.codes[row, :, : batch.frames[row]]
    q = codec.num_codebooks
    out = []
    for e, s in enumerate(sims):
        parts = {name: codes[(e, name)] for name in s.parts}
        out.append(layout_example(s.task, s.text, codes[(e, "<target>")], q, **parts))
    return out


def _record(ex, sim, dtype) -> bytes:
    text = np.zeros(0, np.int32) if sim.text is None else sim.text
    return serialization.msgpack_serialize(
        {
            "codes": ex.target.astype(dtype),
            "text": np.asarray(text, np.int32),
            "prefix": ex.prefix,
            "prefix_kind": ex.kind,
            "prefix_codes": ex.prefix_codes.astype(dtype),
            "task": ex.task,
            "target_start": ex.target_start,
            "speaker": "",
            "duration": 0.0,
            "utt_id": json.dumps(sim.info, sort_keys=True),
        }
    )


def simulate_tokens(
    codec_dir: str | os.PathLike,
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    num_examples: int,
    seed: int = 0,
    symbols: str | os.PathLike | None = None,
    cfg: SimConfig | None = None,
    shard_size: int = 256,
    batch_size: int = 16,
    progress: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    stop_after_shards: int | None = None,
    frontend: str | None = None,
) -> dict:
    """Writes this host's shards, then index.json once every shard exists (module docstring).
    `stop_after_shards` stops early (the resumption test's crash)."""
    import jax

    from nclm.codec.interface import NeuralCodec

    cfg = cfg or SimConfig()
    out = Path(out)
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        raise TokensError(f"--num-examples: expected an integer >= 1, got {num_examples!r}")
    codec_cfg, codec_id = _check_inputs(codec_dir, manifest, out, symbols, batch_size, shard_size)
    table, corpus = load_corpus(manifest, symbols, codec_cfg.sample_rate, progress, frontend)
    noises = None
    if cfg.noise_manifest:
        noises = RecordedNoise(cfg.noise_manifest, codec_cfg.sample_rate)
    fingerprint = _fingerprint(codec_id, manifest, table, seed, cfg, shard_size, num_examples)
    num_shards = math.ceil(num_examples / shard_size)
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    _check_out(out, num_shards, fingerprint)
    out.mkdir(parents=True, exist_ok=True)
    if index == 0:
        table.save(out / SYMBOLS)
    dtype = codes_dtype(codec_cfg.codebook_size)
    todo = [
        k
        for k in range(num_shards)
        if k % count == index and _lengths(out, k, num_shards, fingerprint) is None
    ]
    codec = NeuralCodec.load(codec_dir) if todo else None
    for done, k in enumerate(tqdm(todo, unit="shard", desc="simulate", disable=not progress)):
        if stop_after_shards is not None and done >= stop_after_shards:
            return {"out": str(out), "index": None, "stopped": True}
        ids = range(k * shard_size, min(num_examples, (k + 1) * shard_size))
        hop = codec_cfg.hop_length
        sims = [simulate(corpus, i, seed, cfg, codec_cfg.sample_rate, hop, noises) for i in ids]
        examples = encode_examples(codec, sims, batch_size)
        lengths = {
            "fingerprint": fingerprint,
            "num_records": len(examples),
            "text_len": [len(ex.prefix) - 2 for ex in examples],
            "frames": [int(ex.target.shape[1]) for ex in examples],
            "task": [ex.task for ex in examples],
        }
        from array_record.python.array_record_module import ArrayRecordWriter

        write_atomic(_lengths_path(out, k, num_shards), json.dumps(lengths) + "\n")
        with atomic_path(out / shard_name(k, num_shards), ".array_record") as tmp:
            writer = ArrayRecordWriter(tmp, "group_size:1")
            for ex, sim in zip(examples, sims):
                writer.write(_record(ex, sim, dtype))
            writer.close()
    return _finish(out, codec_cfg, codec_id, table, dtype, num_shards, fingerprint, seed, cfg)


def _finish(out, codec_cfg, codec_id, table, dtype, num_shards, fingerprint, seed, cfg) -> dict:
    shards = [_lengths(out, k, num_shards, fingerprint) for k in range(num_shards)]
    if any(s is None for s in shards):
        return {"out": str(out), "index": None}  # another host's shards are still coming
    tasks = [t for s in shards for t in s["task"]]
    index = {
        **index_fields(codec_cfg, codec_id, table, dtype, shards),
        "tasks": {
            "names": list(TASKS),
            "seed": seed,
            "simulation": cfg.to_dict(),
            "counts": {name: tasks.count(k) for k, name in enumerate(TASKS)},
        },
    }
    write_atomic(out / INDEX, json.dumps(index) + "\n")
    return {"out": str(out), "index": str(out / INDEX), "counts": index["tasks"]["counts"]}
