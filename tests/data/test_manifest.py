"""Manifests: each corpus layout on a tiny fake tree (transcripts, unreadable files counted and
skipped), speaker splits disjoint and deterministic, errors that name the file and line."""

import argparse
import json
import logging

import numpy as np
import pytest
import soundfile as sf

from nclm.data.cli import add_manifest_arguments, run_manifest
from nclm.data.manifest import (
    ManifestError,
    manifest_from_folder,
    manifest_from_librispeech,
    manifest_from_vctk,
    read_manifest,
    resolve_audio,
    split_by_speaker,
    write_manifest,
)


def _wav(path, seconds=0.25, sample_rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(len(str(path))).uniform(-0.3, 0.3, round(seconds * sample_rate))
    sf.write(path, x.astype(np.float32), sample_rate)
    return path


def _corrupt(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF not really a wav file" * 10)
    return path


def _by_id(records):
    return {r["utt_id"]: r for r in records}


def test_folder_layout(tmp_path, caplog):
    root = tmp_path / "corpus"
    _wav(root / "alice" / "a.wav", 0.5)
    _wav(root / "alice" / "b.flac", 0.25, 22050)
    _wav(root / "bob" / "sub" / "c.wav", 1.0)
    (root / "bob" / "sub" / "c.txt").write_text("hello  there\n")
    _corrupt(root / "bob" / "broken.wav")
    (root / "notes.txt").write_text("not audio")
    skipped = []
    with caplog.at_level(logging.WARNING):
        records = manifest_from_folder(root, skipped=skipped)
    got = _by_id(records)
    assert sorted(got) == ["alice/a", "alice/b", "bob/sub/c"]
    assert got["alice/a"]["speaker"] == "alice" and got["bob/sub/c"]["speaker"] == "sub"
    assert got["alice/a"]["duration"] == pytest.approx(0.5)
    assert got["alice/b"]["duration"] == pytest.approx(0.25, abs=1e-4)
    assert got["bob/sub/c"]["text"] == "hello there" and "text" not in got["alice/a"]
    assert len(skipped) == 1 and "broken.wav" in skipped[0][0]
    assert "skipped 1 unreadable" in caplog.text and "broken.wav" in caplog.text


def test_librispeech_layout(tmp_path, caplog):
    root = tmp_path / "LibriSpeech" / "train-clean-100"
    _wav(root / "19" / "198" / "19-198-0000.flac", 0.3)
    _wav(root / "19" / "198" / "19-198-0001.flac", 0.2)
    (root / "19" / "198" / "19-198.trans.txt").write_text(
        "19-198-0000 NORTHANGER ABBEY\n19-198-0001 CHAPTER ONE\n"
    )
    _wav(root / "26" / "495" / "26-495-0000.flac", 0.4)
    _corrupt(root / "26" / "495" / "26-495-0001.flac")
    (root / "26" / "495" / "26-495.trans.txt").write_text("26-495-0000 A B C\n26-495-0001 D\n")
    with caplog.at_level(logging.WARNING):
        records = manifest_from_librispeech(tmp_path / "LibriSpeech")
    got = _by_id(records)
    assert sorted(got) == ["19-198-0000", "19-198-0001", "26-495-0000"]
    assert got["19-198-0001"]["text"] == "CHAPTER ONE"
    assert got["26-495-0000"] == {
        "utt_id": "26-495-0000",
        "audio": str((root / "26" / "495" / "26-495-0000.flac").resolve()),
        "duration": pytest.approx(0.4),
        "speaker": "26",
        "text": "A B C",
    }
    assert "skipped 1 unreadable" in caplog.text and "26-495-0001.flac" in caplog.text


def test_libritts_layout(tmp_path):
    chapter = tmp_path / "LibriTTS" / "84" / "121123"
    _wav(chapter / "84_121123_000007_000001.wav", 0.3, 24000)
    (chapter / "84_121123_000007_000001.normalized.txt").write_text("Hello, world.")
    (chapter / "84_121123_000007_000001.original.txt").write_text("HELLO world")
    _wav(chapter / "84_121123_000008_000000.wav", 0.2, 24000)
    (chapter / "84_121123_000008_000000.original.txt").write_text("Only the original.")
    got = _by_id(manifest_from_librispeech(tmp_path / "LibriTTS"))
    assert got["84_121123_000007_000001"]["text"] == "Hello, world."
    assert got["84_121123_000008_000000"]["text"] == "Only the original."
    assert {r["speaker"] for r in got.values()} == {"84"}
    assert got["84_121123_000008_000000"]["duration"] == pytest.approx(0.2)


def test_vctk_layouts(tmp_path, caplog):
    new = tmp_path / "VCTK-Corpus-0.92"
    _wav(new / "wav48_silence_trimmed" / "p225" / "p225_001_mic1.flac", 0.3, 48000)
    _wav(new / "wav48_silence_trimmed" / "p225" / "p225_001_mic2.flac", 0.3, 48000)
    _wav(new / "wav48_silence_trimmed" / "p315" / "p315_002_mic1.flac", 0.2, 48000)
    _corrupt(new / "wav48_silence_trimmed" / "p315" / "p315_003_mic1.flac")
    (new / "txt" / "p225").mkdir(parents=True)
    (new / "txt" / "p225" / "p225_001.txt").write_text("Please call Stella.\n")
    with caplog.at_level(logging.WARNING):
        got = _by_id(manifest_from_vctk(new))
    assert sorted(got) == ["p225_001", "p315_002"]
    assert got["p225_001"]["text"] == "Please call Stella." and "text" not in got["p315_002"]
    assert got["p225_001"]["audio"].endswith("p225_001_mic1.flac")
    assert got["p315_002"]["speaker"] == "p315"
    assert "skipped 1 unreadable" in caplog.text
    assert sorted(_by_id(manifest_from_vctk(new, mic="mic2"))) == ["p225_001"]

    old = tmp_path / "VCTK-Corpus"
    _wav(old / "wav48" / "p226" / "p226_010.wav", 0.3, 48000)
    (old / "txt" / "p226").mkdir(parents=True)
    (old / "txt" / "p226" / "p226_010.txt").write_text("Six spoons.")
    assert manifest_from_vctk(old)[0]["text"] == "Six spoons."
    with pytest.raises(ManifestError, match="not a VCTK tree"):
        manifest_from_vctk(tmp_path / "VCTK-Corpus" / "txt")


def test_builders_reject_empty_or_missing_roots(tmp_path):
    with pytest.raises(ManifestError, match="no such corpus directory"):
        manifest_from_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no readable audio found"):
        manifest_from_librispeech(tmp_path / "empty")
    _corrupt(tmp_path / "bad" / "x.wav")
    with pytest.raises(ManifestError, match="no readable audio found"):
        manifest_from_folder(tmp_path / "bad")


def _records(num_speakers, per_speaker=3):
    return [
        {"utt_id": f"s{s}_{u}", "audio": f"s{s}/{u}.wav", "duration": 1.0, "speaker": f"s{s}"}
        for s in range(num_speakers)
        for u in range(per_speaker)
    ]


def test_split_by_speaker_disjoint_and_deterministic():
    records = _records(10)
    splits = split_by_speaker(records, valid=2, test=3, seed=7)
    speakers = {name: {r["speaker"] for r in recs} for name, recs in splits.items()}
    assert [len(speakers[n]) for n in ("train", "valid", "test")] == [5, 2, 3]
    assert not (speakers["train"] & speakers["valid"] or speakers["train"] & speakers["test"])
    assert not speakers["valid"] & speakers["test"]
    assert sum(len(v) for v in splits.values()) == len(records)
    assert split_by_speaker(list(reversed(records)), 2, 3, seed=7)["valid"] == list(
        reversed(splits["valid"])
    )  # same speakers chosen whatever the record order
    chosen = {tuple(sorted({r["speaker"] for r in split_by_speaker(records, 2, 3, s)["test"]}))
              for s in range(6)}  # fmt: skip
    assert len(chosen) > 1  # the seed matters
    with pytest.raises(ManifestError, match="at least one training speaker"):
        split_by_speaker(_records(3), valid=2, test=1)
    with pytest.raises(ManifestError, match="valid"):
        split_by_speaker(records, valid=-1)


def test_write_read_roundtrip_and_resolve(tmp_path):
    records = _records(2, 2)
    records[0]["text"] = "héllo"
    records[1]["audio"] = str(tmp_path / "abs.wav")
    path = tmp_path / "m" / "train.jsonl"
    write_manifest(path, records)
    assert read_manifest(path) == records
    assert [p.name for p in path.parent.iterdir()] == ["train.jsonl"]  # no temporary left
    assert resolve_audio(path, records[0]) == tmp_path / "m" / "s0" / "0.wav"
    assert resolve_audio(path, records[1]) == tmp_path / "abs.wav"
    with pytest.raises(ManifestError, match="record 1: utt_id 's0_0' repeats"):
        write_manifest(path, [records[0], records[0]])
    assert read_manifest(path) == records  # a failed write leaves the old file


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"bad\.jsonl:3: not valid JSON"),
        ('["a list"]', r"bad\.jsonl:3: expected a JSON object"),
        (
            '{"utt_id": "x", "audio": "x.wav", "speaker": "s"}',
            r"bad\.jsonl:3: missing key.*duration",
        ),
        ('{"utt_id": "x", "audio": "x.wav", "speaker": "s", "duration": "1"}', r":3: 'duration'"),
        ('{"utt_id": "x", "audio": "", "speaker": "s", "duration": 1}', r":3: 'audio' must be"),
        ('{"utt_id": "x", "audio": "a", "speaker": "s", "duration": 1, "text": 5}', r":3: 'text'"),
        (
            '{"utt_id": "s0_0", "audio": "a", "speaker": "s", "duration": 1}',
            r":3: .* repeats line 1",
        ),
    ],
)
def test_read_manifest_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    good = [json.dumps(r) for r in _records(1, 1)]
    path.write_text(good[0] + "\n\n" + line + "\n")  # a blank line 2 is allowed
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)


def test_read_manifest_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest file"):
        read_manifest(tmp_path / "none.jsonl")


def test_manifest_command(tmp_path, capsys):
    root = tmp_path / "corpus"
    for speaker in ("a", "b", "c", "d"):
        _wav(root / speaker / "1.wav", 0.1)
        _wav(root / speaker / "2.wav", 0.1)
    _corrupt(root / "d" / "3.wav")
    parser = argparse.ArgumentParser()
    add_manifest_arguments(parser)
    out = tmp_path / "manifests"
    args = parser.parse_args(["--layout", "folder", str(root), "--out", str(out), "--test", "2"])
    summary = run_manifest(args)
    assert summary["skipped_files"] == 1
    assert [summary[n]["speakers"] for n in ("train", "valid", "test")] == [1, 1, 2]
    splits = {n: read_manifest(out / f"{n}.jsonl") for n in ("train", "valid", "test")}
    assert sum(len(v) for v in splits.values()) == 8
    assert "skipped 1 unreadable" in capsys.readouterr().out
    with pytest.raises(ManifestError, match="no such corpus directory"):
        run_manifest(
            parser.parse_args(["--layout", "vctk", str(tmp_path / "x"), "--out", str(out)])
        )
    with pytest.raises(ManifestError, match="at least one training speaker"):
        run_manifest(parser.parse_args(["--layout", "folder", str(root), "--out", str(out),
                                        "--valid", "2", "--test", "2"]))  # fmt: skip
