"""`nclm eval score` end to end on rows of flite speech for every task, and its bad inputs.

The evaluators load once per CLI call (a fraction of a second each once librosa is warm); the
rows are few and short, and every bad-input case fails during validation, before any model."""

import json
import sys

import numpy as np
import pytest
import soundfile as sf

from nclm.audio.io import load_audio
from nclm.cli import main
from nclm.eval.rows import TASK_METRICS
from tests.eval.conftest import SENTENCES, flite

SR = 16000


def _fails(capsys, argv: list[str], *fragments: str) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nclm: error:") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def _rows(path, rows: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def task_rows(speech, tmp_path_factory):
    """One folder of audio and rows.jsonl covering tts (also as a tts request, 8 kHz), ns, sr,
    tse and edit, with known answers (SNRs, untouched edit context)."""
    d = tmp_path_factory.mktemp("rows")
    rng = np.random.default_rng(0)
    clean = load_audio(speech["slt", 1], SR)
    noise = rng.standard_normal(clean.size).astype(np.float32)
    noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2))  # same power as the speech
    sf.write(d / "clean.wav", clean, SR)
    sf.write(d / "noisy10.wav", clean + noise / np.sqrt(10), SR)  # SI-SDR 10 dB vs clean
    sf.write(d / "noise.wav", noise * 0.5, SR)
    sf.write(d / "sr_out.wav", noise * 0.5 + clean * 0.05, SR)  # residual speech 20 dB down
    a, b, c = (load_audio(speech["slt", i], SR) for i in range(3))
    gap = np.zeros(SR // 2, np.float32)
    sf.write(d / "edit_ref.wav", np.concatenate([a, gap, b, gap, a]), SR)
    sf.write(d / "edit_out.wav", np.concatenate([a, gap, c, gap, a]), SR)
    span = [(a.size + gap.size) / SR, (a.size + gap.size + b.size) / SR]
    flite(SENTENCES[0], "kal", d / "kal8k.wav")  # an 8 kHz file: resampled for the evaluators
    s = {k: str(v) for k, v in speech.items()}
    edit_text = " ".join([SENTENCES[0], SENTENCES[2], SENTENCES[0]])
    rows = [
        {"id": "t1", "task": "tts", "audio": s["slt", 0], "text": SENTENCES[0],
         "prompt": s["slt", 1]},
        {"text": SENTENCES[0], "prompt": s["awb", 1], "prompt_text": SENTENCES[1],
         "out": "kal8k.wav"},  # an `nclm tts --batch` request: out is the audio, task tts
        {"id": "n1", "task": "ns", "audio": "noisy10.wav", "reference": "clean.wav",
         "text": SENTENCES[1]},
        {"id": "s1", "task": "sr", "audio": "sr_out.wav", "reference": "noise.wav"},
        {"id": "x1", "task": "tse", "audio": "clean.wav", "reference": "clean.wav",
         "enrol": s["slt", 2], "prompt": s["awb", 0], "text": SENTENCES[1]},
        {"id": "e1", "task": "edit", "audio": "edit_out.wav", "reference": "edit_ref.wav",
         "span": span, "text": edit_text, "prompt": s["slt", 1]},
    ]  # fmt: skip
    return _rows(d / "rows.jsonl", rows)


def test_every_task_scored_end_to_end(task_rows, tmp_path, capsys):
    out = tmp_path / "eval"
    main(["eval", "score", task_rows, "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    by = {r.get("id", r["task"] + "-request"): r for r in rows}
    assert set(by) == {"t1", "tts-request", "n1", "s1", "x1", "e1"}
    t1 = by["t1"]
    assert t1["wer"] < 0.5 and t1["sim"] > 0.75 and t1["sim_to"] == "prompt"
    assert 1 <= t1["dnsmos_ovrl"] <= 5 and t1["hypothesis"]
    request = by["tts-request"]  # 8 kHz, resampled; a different voice than its prompt
    assert request["sim"] < t1["sim"] - 0.15 and request["wer"] < 0.7
    n1, x1 = by["n1"], by["x1"]  # x1's output is its clean target itself
    assert n1["si_sdr"] == pytest.approx(10.0, abs=0.5)
    assert n1["pesq_wb"] < x1["pesq_wb"] - 1 and 0.5 < n1["stoi"] < 0.99
    assert n1["dnsmos_bak"] < t1["dnsmos_bak"] - 0.5
    assert by["s1"]["si_sdr"] == pytest.approx(20.0, abs=0.5)
    assert 0 <= by["s1"]["speech_left"] <= 1
    assert x1["sim_to"] == "enrol" and x1["sim"] > 0.75 and x1["pesq_wb"] > 4.4
    assert by["e1"]["mel_outside_edit"] < 1e-9 and by["e1"]["sim"] > 0.75
    assert not any("warnings" in r for r in rows), rows

    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["tasks"]) == ["tts", "ns", "sr", "tse", "edit"]
    assert summary["tasks"]["tts"]["num_rows"] == 2
    wer = summary["tasks"]["tts"]["metrics"]["wer"]
    assert wer["count"] == 2 and wer["mean"] == pytest.approx((t1["wer"] + request["wer"]) / 2)
    corpus = (t1["wer_errors"] + request["wer_errors"]) / (t1["wer_len"] + request["wer_len"])
    assert wer["corpus"] == pytest.approx(corpus)
    low, high = wer["ci95"]
    assert low <= wer["mean"] <= high
    evaluators = summary["evaluators"]
    assert set(evaluators) == {"recognizer", "speaker_encoder", "dnsmos"}
    assert evaluators["speaker_encoder"]["version"] == "0.1.4"
    assert all(len(e["sha256"]) == 16 for e in evaluators.values())
    metrics = {m for task in summary["tasks"] for m in TASK_METRICS[task]}
    assert set(summary["seconds"]) == set(summary["cpu_seconds"]) == {"load_evaluators", *metrics}
    assert all(s >= 0 for s in summary["cpu_seconds"].values())
    markdown = (out / "summary.md").read_text()
    assert "| WER (lower is better) |" in markdown and "## edit (1 rows)" in markdown
    assert markdown in printed  # the table is printed too


def test_bad_inputs_give_one_line(speech, tmp_path, capsys):
    s = {k: str(v) for k, v in speech.items()}
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), SR)
    cases = [
        ({"task": "tts", "audio": "nope.wav", "text": "a", "prompt": s["slt", 0]},
         "rows.jsonl:1: audio:", "no such audio file"),
        ({"task": "tts", "audio": s["slt", 0], "prompt": s["slt", 1]},
         "metric wer of task tts needs 'text'", "--metrics"),
        ({"task": "tts", "audio": s["slt", 0], "text": "?!", "prompt": s["slt", 1]},
         "empty after normalisation",),
        ({"task": "ns", "audio": s["slt", 0], "text": "a"}, "needs 'reference'",),
        ({"task": "tts", "audio": str(empty), "text": "a", "prompt": s["slt", 1]},
         "empty audio (0 samples)",),
        ({"task": "edit", "audio": s["slt", 0], "text": "a", "prompt": s["slt", 1],
          "reference": s["slt", 1], "span": [2, 1]}, "'span' [2, 1]",),
        ({"task": "edit", "audio": s["slt", 0], "text": "a", "prompt": s["slt", 1],
          "reference": s["slt", 1]}, "needs 'span' (the original and the edited span)",),
        ({"task": "vc", "audio": s["slt", 0]}, "task 'vc'; expected one of"),
        ({"audio": s["slt", 0]}, "task None", "--task"),
    ]  # fmt: skip
    for row, *fragments in cases:
        rows = _rows(tmp_path / "rows.jsonl", [row])
        _fails(capsys, ["eval", "score", rows, "--no-progress"], *fragments)
    rows = _rows(tmp_path / "rows.jsonl", [{"task": "tts", "audio": s["slt", 0]}])
    _fails(capsys, ["eval", "score", rows, "--metrics", "wer,bleu"], "--metrics", "bleu")
    _fails(capsys, ["eval", "score", str(tmp_path / "none.jsonl")], "no such rows file")


def test_missing_evaluator_is_one_line(speech, tmp_path, capsys, monkeypatch):
    rows = _rows(tmp_path / "rows.jsonl", [{"audio": str(speech["slt", 0]), "text": "a b"}])
    monkeypatch.setitem(sys.modules, "pocketsphinx", None)
    _fails(capsys, ["eval", "score", rows, "--task", "tts", "--metrics", "wer"],
           "pocketsphinx", "pip install 'nclm[eval]'")  # fmt: skip


def test_silent_audio_is_reported_and_left_out(tmp_path, capsys):
    sf.write(tmp_path / "silent.wav", np.zeros(SR, np.float32), SR)
    sf.write(tmp_path / "ref.wav", np.random.default_rng(0).standard_normal(SR) * 0.1, SR)
    rows = _rows(tmp_path / "rows.jsonl", [
        {"task": "ns", "audio": "silent.wav", "reference": "ref.wav"}])  # fmt: skip
    out = tmp_path / "eval"
    argv = ["eval", "score", rows, "--metrics", "si_sdr,stoi", "--out", str(out), "--no-progress"]
    main(argv)
    err = capsys.readouterr().err
    assert "rows.jsonl:1: audio is silent (peak below -80 dBFS)" in err
    row = json.loads((out / "rows.jsonl").read_text())
    assert row["si_sdr"] is None and "si_sdr undefined (not finite)" in row["warnings"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"]["ns"]["metrics"]["si_sdr"]["count"] == 0
