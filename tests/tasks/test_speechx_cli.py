"""`nclm enhance | remove-speech | extract | edit` on a tiny random codec and a tiny random
multi-task LM, through `nclm.cli.main`: each command writes audio of the expected length
atomically, batch mode works, and every bad input of the issue fails with one line before any
weights load."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from nclm.cli import main
from tests.tasks.tiny_checkpoints import write_tiny_checkpoints

SR = 16000
CORPUS = ["the quick brown fox jumps over the lazy dog"]


def _voice(seconds: float, f0: float = 130.0) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return (0.2 * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) * np.sin(2 * np.pi * f0 * t)).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("speechx")
    tasks = ["tts", "ns", "sr", "tse", "cse", "nse"]
    limits = {"max_text_tokens": 160, "max_audio_frames": 100}
    write_tiny_checkpoints(root, CORPUS, {**limits, "tasks": tasks})
    shutil.copytree(root / "lm", root / "tts_lm")  # the same LM, recorded as TTS-only
    meta = json.loads((root / "tts_lm" / "lm.json").read_text())
    (root / "tts_lm" / "lm.json").write_text(json.dumps({**meta, "tasks": ["tts"]}))
    sf.write(root / "noisy.wav", _voice(0.6), SR)
    sf.write(root / "enroll.wav", _voice(1.5, 180.0), SR)
    sf.write(root / "short.wav", _voice(0.5, 180.0), SR)
    sf.write(root / "long.wav", _voice(2.5), SR)
    sf.write(root / "silence.wav", np.zeros(SR // 2, np.float32), SR)
    (root / "broken.wav").write_bytes(b"RIFF not audio")
    return root


def _cmd(root, command, *args, lm="lm"):
    return [command, "--lm", str(root / lm), "--codec", str(root / "codec"), *map(str, args)]


def test_commands_write_audio(setup, capsys):
    """One command per mode: enhance (ar), extract (masked), noisy edit (ar+masked)."""
    root = setup
    runs = {
        "enhance": _cmd(root, "enhance", root / "noisy.wav", root / "e.wav", "--mode", "ar"),
        "extract": _cmd(root, "extract", root / "noisy.wav", "--enroll", root / "enroll.wav",
                        root / "x.wav", "--text", "the fox", "--mode", "masked"),
        "edit": _cmd(root, "edit", root / "noisy.wav", "--span", "0.2:0.4", "--text",
                     "the lazy fox", root / "d.wav", "--noisy", "--mode", "ar+masked"),
    }  # fmt: skip
    for argv in runs.values():
        main(argv)
    out = capsys.readouterr().out
    assert out.count("wrote") == 3, out
    for name in ("e", "x"):  # ns/tse: as many frames as the input (0.6 s = 30 frames)
        wav, rate = sf.read(root / f"{name}.wav")
        assert rate == SR and len(wav) == 30 * 320, (name, len(wav))
    wav, _ = sf.read(root / "d.wav")  # the kept pre (10 frames) and at least one new frame
    assert len(wav) >= 11 * 320
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_batch_mode(setup, capsys):
    root = setup
    lines = [
        {"in": "noisy.wav", "out": "b1.wav"},
        {"in": "noisy.wav", "out": "b2.wav", "text": "the dog"},
    ]
    (root / "req.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    main(_cmd(root, "remove-speech", "--batch", root / "req.jsonl"))
    assert capsys.readouterr().out.count("wrote") == 2
    assert (root / "b1.wav").is_file() and (root / "b2.wav").is_file()


def test_batch_spreads_over_devices_and_equals_one_by_one(setup, capsys, monkeypatch):
    """Five edits, clean and noisy mixed, in batch mode: four share a shape bucket and spread
    over 4 of the 8 fake devices, the fifth (a longer input) is a batch of its own on one. Every
    output equals `--devices 1`'s sample for sample and the same request decoded alone
    (`--batch-size 1`) to the 16-bit rounding step, and is written where its line asked, in
    order."""
    from nclm.tasks.speechx import SpeechXRunner

    root = setup
    sf.write(root / "longer.wav", _voice(1.4, 150.0), SR)  # 70 frames: another bucket
    requests = [
        {"in": "noisy.wav", "span": "0.2:0.4", "text": "the lazy fox"},
        {"in": "longer.wav", "span": "0.2:0.4", "text": "the quick dog", "noisy": True},
        {"in": "noisy.wav", "span": "0.1:0.3", "text": "the dog", "noisy": True},
        {"in": "noisy.wav", "span": "0.3:0.5", "text": "a brown fox"},
        {"in": "noisy.wav", "span": "0.0:0.2", "text": "over the dog"},
    ]
    used, run = [], SpeechXRunner.run
    monkeypatch.setattr(
        SpeechXRunner, "run", lambda self, *a: (run(self, *a), used.append(self))[0]
    )
    wavs = {}
    for folder, options in (
        ("x4", []),
        ("x1", ["--devices", "1"]),
        ("alone", ["--batch-size", "1"]),
    ):
        jsonl = root / f"edits_{folder}.jsonl"
        lines = [json.dumps({**r, "out": f"{folder}/{k}.wav"}) for k, r in enumerate(requests)]
        jsonl.write_text("".join(line + "\n" for line in lines))
        main(_cmd(root, "edit", "--batch", jsonl, "--batch-size", "4", *options))
        out = capsys.readouterr().out.splitlines()
        assert [line.split()[1] for line in out] == [
            str(root / folder / f"{k}.wav") for k in range(5)
        ]
        wavs[folder] = [sf.read(root / folder / f"{k}.wav", dtype="float32")[0] for k in range(5)]
    assert [runner.batch_devices for runner in used] == [[4, 1], [1, 1], [1] * 5]
    for k in range(5):
        assert len(wavs["x4"][k]) > 0
        np.testing.assert_array_equal(wavs["x4"][k], wavs["x1"][k])
        # alone: the same codes; the codec decodes them in a batch of 1 instead of 4, so the
        # 16-bit samples may differ by a rounding step (a wrong code moves whole stretches)
        np.testing.assert_allclose(wavs["x4"][k], wavs["alone"][k], rtol=0, atol=2 / 32768)


def _fails(capsys, argv, *names):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nclm: error: "), err
    for name in names:
        assert name in lines[0], (name, err)


BAD = {  # name -> (command args after the model options, words the one line must hold)
    "missing audio": (["enhance", "absent.wav", "o.wav"], ("absent.wav", "no such")),
    "unreadable audio": (["enhance", "broken.wav", "o.wav"], ("broken.wav", "unreadable")),
    "silence": (["enhance", "silence.wav", "o.wav"], ("silence.wav", "silent")),
    "enrolment too short": (
        ["extract", "noisy.wav", "--enroll", "short.wav", "o.wav"],
        ("short.wav", "0.50 s"),
    ),
    "enrolment too long": (
        ["extract", "noisy.wav", "--enroll", "long.wav", "o.wav"],
        ("long.wav", "2.50 s"),
    ),  # fmt: skip
    "span outside": (
        ["edit", "noisy.wav", "--span", "0.2:0.9", "--text", "the fox", "o.wav"],
        ("outside",),
    ),
    "span empty": (
        ["edit", "noisy.wav", "--span", "0.3:0.3", "--text", "the fox", "o.wav"],
        ("empty",),
    ),
    "span reversed": (
        ["edit", "noisy.wav", "--span", "0.4:0.2", "--text", "the fox", "o.wav"],
        ("reversed",),
    ),
    "span not numbers": (
        ["edit", "noisy.wav", "--span", "a:b", "--text", "the fox", "o.wav"],
        ("--span", "START"),
    ),
    "unknown symbols": (
        ["edit", "noisy.wav", "--span", "0.1:0.2", "--text", "the fox 42", "o.wav"],
        ("unknown symbol", "'4'"),
    ),
    "input too long": (["enhance", "long.wav", "o.wav"], ("long.wav", "at most", "no windowing")),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_inputs_fail_with_one_line(setup, capsys, monkeypatch, name):
    monkeypatch.chdir(setup)
    args, words = BAD[name]
    command, rest = args[0], args[1:]
    # the enrolment limit (10 s) is shrunk so the test clips stay small
    monkeypatch.setattr("nclm.tasks.speechx.ENROL_SECONDS", (1.0, 2.0))
    _fails(capsys, _cmd(setup, command, *rest), *words)
    assert not (setup / "o.wav").exists()


def test_untrained_task_is_refused(setup, capsys):
    argv = _cmd(setup, "enhance", setup / "noisy.wav", setup / "o.wav", lm="tts_lm")
    _fails(capsys, argv, "never trained on ns", "speechx.py")
