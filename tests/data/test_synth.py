"""The synthetic corpus: real espeak-ng audio at 16 kHz, manifests that match the files, speakers
disjoint across splits and audibly different; a clear error when espeak-ng is missing."""

import argparse
import json

import numpy as np
import pytest
import soundfile as sf

from nclm.data import synth
from nclm.data.cli import add_synth_arguments, run_synth
from nclm.data.manifest import read_manifest, resolve_audio
from nclm.data.synth import SynthError, sentence, speaker_table, synth_corpus

# espeak-ng is a setup requirement (launch/setup.sh installs it): the tests that synthesise fail
# without it, naming the install line; the missing-program error has its own test below.
needs_espeak = pytest.mark.needs("espeak-ng")


def _mean_log_spectrum(x: np.ndarray) -> np.ndarray:
    """Long-term average spectrum in dB over the voiced (loud) frames, mean removed."""
    n = 512
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[::256] * np.hanning(n)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    energy = power.sum(1)
    db = 10 * np.log10(power[energy > 1e-3 * energy.max()].mean(0) + 1e-10)
    return db - db.mean()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The 4-speaker corpus."""
    out = tmp_path_factory.mktemp("synth")
    summary = synth_corpus(out, 4, 2, seed=0, splits=(2, 1, 1), use_flite=False, progress=False)
    return out, summary


@needs_espeak
def test_corpus_files_and_manifests(corpus):
    out, summary = corpus
    assert summary["failed"] == 0
    assert summary["utterances"] == {"train": 4, "valid": 2, "test": 2}
    splits = {name: read_manifest(out / f"{name}.jsonl") for name in ("train", "valid", "test")}
    speakers = {name: {r["speaker"] for r in recs} for name, recs in splits.items()}
    assert [len(speakers[n]) for n in ("train", "valid", "test")] == [2, 1, 1]
    assert len(set.union(*speakers.values())) == 4  # disjoint
    for name, records in splits.items():
        for record in records:
            path = resolve_audio(out / f"{name}.jsonl", record)
            info = sf.info(path)
            assert info.samplerate == 16000 and info.channels == 1
            assert record["duration"] == pytest.approx(info.frames / 16000, abs=1e-6)
            wav, _ = sf.read(path)
            assert 0.5 < record["duration"] < 8.0
            assert np.sqrt(np.mean(wav**2)) > 0.02  # speech, not silence
            assert np.abs(wav[:80]).max() < 0.5 * np.abs(wav).max()  # trimmed, not cut mid-word
            assert 4 <= len(record["text"].split()) <= 14
    table = json.loads((out / "speakers.json").read_text())
    assert [s["speaker"] for s in table] == [f"spk00{i}" for i in range(4)]
    assert len({(s["voice"], s["variant"], s["pitch"], s["speed"]) for s in table}) == 4
    assert {s["speaker"]: s["split"] for s in table} == {
        spk: name for name, spks in speakers.items() for spk in spks
    }
    assert not list(out.rglob(".*"))  # no temporaries left behind


@needs_espeak
def test_speakers_sound_different(corpus):
    out, _ = corpus
    records = [
        r for name in ("train", "valid", "test") for r in read_manifest(out / f"{name}.jsonl")
    ]
    by_speaker = {}
    for record in records:
        wav, _ = sf.read(resolve_audio(out / "train.jsonl", record))
        by_speaker.setdefault(record["speaker"], []).append(_mean_log_spectrum(wav))
    mean = {spk: np.mean(specs, axis=0) for spk, specs in by_speaker.items()}
    names = sorted(mean)
    distances = [
        np.abs(mean[a] - mean[b]).mean() for i, a in enumerate(names) for b in names[i + 1 :]
    ]
    assert min(distances) > 1.5, distances  # dB, averaged over frequency


def test_missing_espeak_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no programs at all
    with pytest.raises(SynthError, match="install the Debian package espeak-ng"):
        synth_corpus(tmp_path / "out", 4, 2, splits=(2, 1, 1), progress=False)
    assert not (tmp_path / "out").exists()


@needs_espeak
def test_failed_utterances_are_counted_and_skipped(tmp_path, monkeypatch, caplog):
    command = synth._command
    monkeypatch.setattr(
        synth,
        "_command",
        lambda spk, text, wav: ["false"] if spk["speaker"] == "spk001" else command(spk, text, wav),
    )
    summary = synth_corpus(tmp_path, 3, 2, seed=1, use_flite=False, progress=False)
    assert summary["failed"] == 2
    assert "2 of 6 utterances failed" in caplog.text
    records = [
        r for n in ("train", "valid", "test") for r in read_manifest(tmp_path / f"{n}.jsonl")
    ]
    assert len(records) == 4 and "spk001" not in {r["speaker"] for r in records}


def test_sentences_and_speaker_table_are_deterministic():
    lengths = [len(sentence(np.random.default_rng([5, i])).split()) for i in range(300)]
    assert min(lengths) >= 4 and max(lengths) <= 14 and len(set(lengths)) > 5
    assert sentence(np.random.default_rng(3)) == sentence(np.random.default_rng(3))
    assert speaker_table(30, 0, True) == speaker_table(30, 0, True)
    table = speaker_table(60, 0, True)
    assert len({(s["voice"], s["variant"], s["pitch"], s["speed"]) for s in table}) == 60
    assert sorted(s["voice"] for s in table if s["engine"] == "flite") == sorted(synth.FLITE_VOICES)
    first = speaker_table(len(synth.ESPEAK_VARIANTS), 0, False)
    assert len({s["variant"] for s in first}) == len(synth.ESPEAK_VARIANTS)  # no repeats early


def test_synth_command_validates_first(tmp_path):
    parser = argparse.ArgumentParser()
    add_synth_arguments(parser)
    with pytest.raises(SynthError, match="--speakers"):
        run_synth(parser.parse_args(["--out", str(tmp_path / "a"), "--speakers", "0"]))
    with pytest.raises(SynthError, match="at least one of the 3 speakers"):
        run_synth(
            parser.parse_args(["--out", str(tmp_path / "a"), "--speakers", "3", "--valid", "2"])
        )
    (tmp_path / "file").write_text("x")
    with pytest.raises(SynthError, match="not a directory"):
        run_synth(parser.parse_args(["--out", str(tmp_path / "file")]))
    assert not (tmp_path / "a").exists()
