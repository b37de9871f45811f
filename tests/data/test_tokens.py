"""`nclm tokens extract` on a tiny synthesized corpus with a tiny random codec: records hold each
clip's own codes and text ids, a crashed run resumes to the same bytes, hosts split the shards,
and bad inputs fail with one line.

Every extraction loads the codec afresh (and so compiles again, from the on-disk cache when warm):
the clips are kept under one 50-frame bucket so that each run compiles one or two programs."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile as sf

from nclm.cli import main
from nclm.codec import config
from nclm.codec.interface import NeuralCodec
from nclm.codec.model import init_codec
from nclm.data.manifest import ManifestError, write_manifest
from nclm.data.token_pipeline import make_eval_batches
from nclm.data.tokens import decode_record, extract_tokens
from nclm.text.symbols import SymbolTable, UnknownSymbolError

TEXTS = [
    "Hello, world.",
    "The quick brown fox.",
    "Good night, moon.",
    "It is raining again.",
    "One, two, three.",
    "A bird in the hand.",
    "Time flies.",
]
FRONTEND = "phonemes"
# Every test extracts the espeak-ng phonemes of the corpus (a setup requirement, not a fallback).
pytestmark = pytest.mark.needs("espeak-ng")


def _clip(i: int, sample_rate: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    num = int(sample_rate * (0.3 + 0.08 * i))  # 0.3 .. 0.78 s: one encode bucket
    t = np.arange(num) / sample_rate
    return (0.3 * np.sin(2 * np.pi * 180 * (i + 1) * t) + 0.05 * rng.standard_normal(num)).astype(
        np.float32
    )


def _manifest(root: Path, texts, name="train.jsonl") -> Path:
    records = []
    for i, text in enumerate(texts):
        sample_rate = 16000 if i % 3 else 22050  # some clips need resampling to the codec rate
        rel = f"wavs/{name}-{i}.wav"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        wav = _clip(i, sample_rate)
        sf.write(root / rel, wav, sample_rate, subtype="FLOAT")
        record = {"utt_id": f"u{i}", "audio": rel, "duration": len(wav) / sample_rate}
        records.append({**record, "speaker": f"s{i % 2}", "text": text})
    write_manifest(root / name, records)
    return root / name


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    cfg = config.tiny("dac")
    NeuralCodec(cfg, init_codec(cfg, jax.random.PRNGKey(0))).save(root / "codec")
    manifest = _manifest(root, TEXTS)
    out = root / "tokens"
    extract_tokens(root / "codec", manifest, out, frontend=FRONTEND, batch_size=3, shard_size=3)
    return root, manifest, out


def _extract(root, manifest, out, **kwargs):
    kwargs = {"frontend": FRONTEND, "batch_size": 3, "shard_size": 3, "progress": False, **kwargs}
    return extract_tokens(root / "codec", manifest, out, **kwargs)


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _records(out: Path) -> list[dict]:
    from array_record.python.array_record_module import ArrayRecordReader

    index = json.loads((out / "index.json").read_text())
    records = []
    for shard in index["shards"]:
        reader = ArrayRecordReader(str(out / shard["file"]))
        records += [decode_record(b) for b in reader.read_all()]
        reader.close()
    return records


def test_records_hold_each_clips_codes_and_text(corpus):
    root, manifest, out = corpus
    index = json.loads((out / "index.json").read_text())
    names = [f"tokens-0000{k}-of-00003.array_record" for k in range(3)]
    assert [s["file"] for s in index["shards"]] == names
    assert [s["num_records"] for s in index["shards"]] == [3, 3, 1]
    assert index["num_records"] == len(TEXTS) and index["codes_dtype"] == "int16"
    assert index["frontend"] == {"kind": FRONTEND, "language": "en-us"}
    assert (index["num_codebooks"], index["codebook_size"], index["sample_rate"]) == (4, 256, 16000)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left

    codec = NeuralCodec.load(root / "codec")
    assert index["codec_id"] == codec.codec_id
    table = SymbolTable.load(out / "symbols.json")
    records = _records(out)
    text_len = [n for s in index["shards"] for n in s["text_len"]]
    frames = [n for s in index["shards"] for n in s["frames"]]
    for i, (record, text) in enumerate(zip(records, TEXTS, strict=True)):
        wav = _clip(i, 16000) if i % 3 else None
        if wav is None:  # resampled from 22.05 kHz, as the extraction does
            from nclm.audio.io import load_audio

            wav = load_audio(root / f"wavs/train.jsonl-{i}.wav", 16000)
        codes, num_frames = codec.encode(wav[None])
        assert record["codes"].dtype == np.int16
        np.testing.assert_array_equal(record["codes"], codes[0, :, : num_frames[0]])
        np.testing.assert_array_equal(record["text"], table.encode(table.frontend.tokens(text)))
        assert record["text"].dtype == np.int32
        assert (record["utt_id"], record["speaker"]) == (f"u{i}", f"s{i % 2}")
        assert record["duration"] == pytest.approx(len(wav) / 16000)
        assert (text_len[i], frames[i]) == (len(record["text"]), record["codes"].shape[1])

    # the LM pipeline reads the same records
    batches = make_eval_batches(out, (32, 64), (64,), 10_000, host_index=0, host_count=1)
    assert sum(int((b["code_len"] > 0).sum()) for b in batches) == len(TEXTS)


def test_resume_after_crash_gives_the_same_bytes(corpus, tmp_path, monkeypatch):
    root, manifest, _ = corpus
    reference, out = tmp_path / "reference", tmp_path / "tokens"
    _extract(root, manifest, reference, batch_size=2, shard_size=2)  # 4 shards, 1 batch each
    encode, calls = NeuralCodec.encode, {"n": 0}

    def crashing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash in shard 2")
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(NeuralCodec, "encode", crashing)
    with pytest.raises(KeyboardInterrupt):
        _extract(root, manifest, out, batch_size=2, shard_size=2)
    assert sorted(p.name for p in out.glob("*.array_record")) == [
        "tokens-00000-of-00004.array_record",
        "tokens-00001-of-00004.array_record",
    ]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left
    assert not (out / "index.json").exists()

    calls["n"] = -100  # no more crashes
    summary = _extract(root, manifest, out, batch_size=2, shard_size=2)
    assert calls["n"] == -98  # only shards 2 and 3 were encoded
    assert summary["num_records"] == len(TEXTS)
    assert _files(out) == _files(reference)


def test_hosts_split_the_shards(corpus, tmp_path):
    root, manifest, reference = corpus
    out = tmp_path / "tokens"
    first = _extract(root, manifest, out, process_index=0, process_count=2)
    assert first["index"] is None and first["shards_done"] == 2  # shards 0 and 2
    assert sorted(p.name for p in out.glob("*.array_record")) == [
        "tokens-00000-of-00003.array_record",
        "tokens-00002-of-00003.array_record",
    ]
    last = _extract(root, manifest, out, process_index=1, process_count=2)
    assert last["index"] == str(out / "index.json")  # the last host writes the index
    assert _files(out) == _files(reference)


def test_missing_text_is_one_line_naming_the_line(corpus, tmp_path):
    root, _, _ = corpus
    manifest = _manifest(tmp_path, TEXTS[:3])
    lines = manifest.read_text().splitlines()
    lines[1] = json.dumps({k: v for k, v in json.loads(lines[1]).items() if k != "text"})
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match=r"train.jsonl:2: utterance 'u1' has no 'text'"):
        _extract(root, manifest, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_symbols_reused_and_unknown_symbols_named(corpus, tmp_path):
    root, _, train = corpus
    valid = _manifest(tmp_path, ["Good night, world.", "The brown bird."], "valid.jsonl")
    summary = _extract(root, valid, tmp_path / "valid", symbols=train / "symbols.json")
    assert summary["num_records"] == 2
    assert (tmp_path / "valid" / "symbols.json").read_bytes() == (
        train / "symbols.json"
    ).read_bytes()

    # '¡' is in neither the corpus nor the English coverage list that every table includes
    test = _manifest(tmp_path, ["Hello, world.", "¡Quiz!"], "test.jsonl")
    with pytest.raises(UnknownSymbolError, match=r"'¡'.*test.jsonl:2 \('¡Quiz!'\)") as info:
        _extract(root, test, tmp_path / "test", symbols=train / "symbols.json")
    assert "\n" not in str(info.value)
    other = "graphemes"
    with pytest.raises(ValueError, match=f"--frontend {other}: .* built with {FRONTEND}"):
        _extract(root, valid, tmp_path / "v2", symbols=train / "symbols.json", frontend=other)


def test_output_of_another_extraction_is_refused(corpus, tmp_path):
    root, manifest, train = corpus
    out = tmp_path / "tokens"
    _extract(root, _manifest(tmp_path, TEXTS[:2]), out)
    with pytest.raises(ValueError, match="holds shards of another extraction"):
        _extract(root, manifest, out)


def _cli_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(["tokens", "extract", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_cli_validates_first(corpus, tmp_path, capsys):
    root, manifest, _ = corpus
    codec, out = str(root / "codec"), str(tmp_path / "out")
    err = _cli_error(capsys, "--codec", str(tmp_path / "nope"), "--manifest", str(manifest),
                     "--out", out)  # fmt: skip
    assert "nope: no such codec checkpoint directory" in err
    err = _cli_error(
        capsys, "--codec", codec, "--manifest", str(tmp_path / "x.jsonl"), "--out", out
    )
    assert "x.jsonl: no such manifest file" in err
    err = _cli_error(capsys, "--codec", codec, "--manifest", str(manifest), "--out", out,
                     "--batch-size", "0")  # fmt: skip
    assert "--batch-size: expected an integer >= 1, got 0" in err
    assert not (tmp_path / "out").exists()


def test_cli_extract(corpus, tmp_path, capsys):
    root, manifest, reference = corpus
    out = tmp_path / "out"
    main(["tokens", "extract", "--codec", str(root / "codec"), "--manifest", str(manifest),
          "--out", str(out), "--frontend", FRONTEND, "--batch-size", "3", "--shard-size", "3",
          "--no-progress"])  # fmt: skip
    assert f"{len(TEXTS)} utterances in 3 shard(s)" in capsys.readouterr().out
    assert _files(out) == _files(reference)


@pytest.mark.needs("torch", "transformers")
def test_extract_with_semantic_ids(corpus, tmp_path, capsys):
    """--semantic: every record gains the tokenizer's ids on its codec frames, index.json names
    the tokenizer (copied into --out), the pipeline batches carry them, and the shards are
    another extraction's than those without."""
    from test_semantic import tiny_tokenizer

    from nclm.audio.io import load_audio

    root, manifest, plain = corpus
    tokenizer = tiny_tokenizer(tmp_path, k=8)
    out = tmp_path / "tokens"
    main(["tokens", "extract", "--codec", str(root / "codec"), "--manifest", str(manifest),
          "--out", str(out), "--frontend", FRONTEND, "--batch-size", "3", "--shard-size", "3",
          "--semantic", str(tmp_path / "semantic"), "--no-progress"])  # fmt: skip
    assert "semantic ids (k=8)" in capsys.readouterr().out
    index = json.loads((out / "index.json").read_text())
    assert index["semantic"] == {
        "path": "semantic",
        "source": str(tmp_path / "semantic"),
        "num_clusters": 8,
        "frame_rate": 50.0,
        "tokenizer_id": tokenizer.tokenizer_id,
    }
    for name in ("semantic.json", "centroids.npy"):
        assert (out / "semantic" / name).read_bytes() == (tmp_path / "semantic" / name).read_bytes()
    assert "semantic" not in json.loads((plain / "index.json").read_text())
    codec = NeuralCodec.load(root / "codec")
    plain_records = _records(plain)
    for i, record in enumerate(_records(out)):
        np.testing.assert_array_equal(record["codes"], plain_records[i]["codes"])
        assert "semantic" not in plain_records[i]
        num_frames = record["codes"].shape[1]
        assert record["semantic"].dtype == np.int32 and record["semantic"].shape == (num_frames,)
        wav = load_audio(root / f"wavs/train.jsonl-{i}.wav", 16000)
        expected = tokenizer.frame_tokens(wav, 16000, num_frames, codec.frame_rate)
        np.testing.assert_array_equal(record["semantic"], expected)

    batches = make_eval_batches(out, (32, 64), (64,), 10_000, host_index=0, host_count=1)
    for batch in batches:
        assert batch["semantic"].shape == (len(batch["codes"]), 64)
        assert batch["semantic"].max() < 8
    with pytest.raises(ValueError, match="holds shards of another extraction"):
        _extract(root, manifest, plain, semantic=tmp_path / "semantic")


def test_extract_semantic_inputs_checked_first(corpus, tmp_path, monkeypatch):
    import sys

    from nclm.data.semantic import SemanticError

    root, manifest, _ = corpus
    out = tmp_path / "out"
    with pytest.raises(SemanticError, match="not a semantic tokenizer"):
        _extract(root, manifest, out, semantic=tmp_path)
    (tmp_path / "tok").mkdir()
    meta = {"format": "nclm-semantic", "model": str(tmp_path / "gone"), "model_type": "hubert"}
    meta.update(layer=6, dim=768, sample_rate=16000, frame_rate=50.0, normalize=False)
    (tmp_path / "tok" / "semantic.json").write_text(json.dumps(meta))
    np.save(tmp_path / "tok" / "centroids.npy", np.zeros((2, 768), np.float32))
    with pytest.raises(SemanticError, match="semantic.json: lacks num_clusters, tokenizer_id"):
        _extract(root, manifest, out, semantic=tmp_path / "tok")
    meta.update(num_clusters=2, tokenizer_id="x")
    (tmp_path / "tok" / "semantic.json").write_text(json.dumps(meta))
    with pytest.raises(SemanticError, match="gone: no such model directory"):
        _extract(root, manifest, out, semantic=tmp_path / "tok")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(SemanticError, match=r"pip install nclm\[semantic\]$"):
        _extract(root, manifest, out, semantic=tmp_path / "tok")
    assert not out.exists()
