"""The `nclm codec` commands end to end on the tiny codec (16 kHz, hop 320, 4 x 256 codes).

Every command runs in-process through `nclm.cli.main`. Each CLI call loads the codec afresh and so
compiles again; the clips are sized so that most calls share one padded shape (buckets of 50
frames) and the whole file stays well under a minute on two CPU cores.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from nclm.cli import main

CONFIG = str(Path(__file__).parents[1] / "configs" / "codec" / "encodec_24khz.py") + ":tiny"
SR, HOP, Q, V = 16000, 320, 4, 256
SPEECH_SAMPLES = 20_837  # 1.3 s, not a multiple of the hop


def _speech(num_samples: int, sample_rate: int = SR, seed: int = 0) -> np.ndarray:
    """Speech-like: harmonics of a 130 Hz voice with vibrato and a syllable-rate envelope, plus
    noise bursts."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / sample_rate
    f0 = 130 * (1 + 0.06 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    voiced = envelope * sum(np.sin(k * phase) / k for k in range(1, 8))
    bursts = (np.sin(2 * np.pi * 2.5 * t) > 0.8) * rng.standard_normal(num_samples)
    return (0.25 * voiced + 0.1 * bursts).astype(np.float32)


def _encode(codec: Path, src: Path, dst: Path, *extra: str) -> list[str]:
    return ["codec", "encode", "--codec", str(codec), str(src), str(dst), *extra]


def _decode(codec: Path, src: Path, dst: Path, *extra: str) -> list[str]:
    return ["codec", "decode", "--codec", str(codec), str(src), str(dst), *extra]


def _init(out: Path, *extra: str) -> str:
    main(["codec", "init", "--config", CONFIG, "--out", str(out), *extra])
    return json.loads((out / "codec.json").read_text())["codec_id"]


@pytest.fixture(scope="module")
def codec(tmp_path_factory):
    path = tmp_path_factory.mktemp("codec") / "tiny"
    return path, _init(path)


@pytest.fixture(scope="module")
def speech(tmp_path_factory, codec):
    """The speech clip and its codes, encoded on its own."""
    root = tmp_path_factory.mktemp("speech")
    sf.write(root / "speech.wav", _speech(SPEECH_SAMPLES), SR, subtype="FLOAT")
    main(_encode(codec[0], root / "speech.wav", root / "s.npz"))
    return root / "speech.wav", root / "s.npz"


def _fails(capsys, argv: list[str], *names: str) -> str:
    """Runs a command that must fail: exit 2, one stderr line naming `names`, no traceback."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("nclm: error: "), err
    for name in names:
        assert name in lines[0], (name, err)
    return lines[0]


def test_init_writes_checkpoint_and_config(codec, capsys):
    path, cid = codec
    assert cid.startswith("tiny_seanet_waveform-")
    saved = json.loads((path / "config.json").read_text())
    assert saved["seed"] == 0 and saved["codec"]["sample_rate"] == SR


def test_info(codec, capsys):
    path, cid = codec
    main(["codec", "info", "--codec", str(path), "--json"])
    facts = json.loads(capsys.readouterr().out)
    assert facts["codec_id"] == cid and facts["name"] == "tiny_seanet_waveform"
    assert (facts["sample_rate"], facts["hop_length"], facts["frame_rate"]) == (SR, HOP, 50)
    assert (facts["num_codebooks"], facts["codebook_size"]) == (Q, V)
    assert facts["bitrate_kbps"] == pytest.approx(50 * Q * 8 / 1000)
    assert facts["num_params"] > 10_000
    main(["codec", "info", "--codec", str(path)])
    text = capsys.readouterr().out
    assert cid in text and "1.6 kbps" in text and f"{facts['num_params']:,}" in text


def test_round_trip_keeps_length(codec, speech, tmp_path):
    path, cid = codec
    wav_in, codes_file = speech
    with np.load(codes_file) as z:
        assert z["codes"].dtype == np.int32
        assert z["codes"].shape == (Q, -(-SPEECH_SAMPLES // HOP))
        assert 0 <= z["codes"].min() and z["codes"].max() < V
        assert str(z["codec_id"]) == cid and int(z["sample_rate"]) == SR
        assert float(z["frame_rate"]) == 50 and int(z["num_samples"]) == SPEECH_SAMPLES
    main(_decode(path, codes_file, tmp_path / "out.wav"))
    info = sf.info(tmp_path / "out.wav")
    assert (info.frames, info.samplerate, info.subtype) == (SPEECH_SAMPLES, SR, "PCM_16")
    main(_decode(path, codes_file, tmp_path / "two.wav", "--levels", "2"))
    assert sf.info(tmp_path / "two.wav").frames == SPEECH_SAMPLES


def test_directory_mixed_formats_and_rates(codec, speech, tmp_path):
    path, _ = codec
    src, dst = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    files = {  # name: (seconds, sample rate, channels, subtype)
        "a.wav": (0.7, SR, 1, "PCM_16"),
        "sub/b.flac": (2.1, SR, 1, "PCM_16"),  # the longest: speech.wav is batched with it
        "stereo.wav": (0.9, SR, 2, "PCM_16"),
        "low.wav": (1.0, 8000, 1, "PCM_16"),
        "sub/high.flac": (0.5, 48000, 1, "PCM_24"),
        "u8.wav": (0.6, SR, 1, "PCM_U8"),
        "float.wav": (0.8, SR, 1, "FLOAT"),
    }
    for i, (name, (seconds, rate, channels, subtype)) in enumerate(files.items()):
        x = np.stack([_speech(round(seconds * rate), rate, seed=i)] * channels, axis=1)
        sf.write(src / name, x, rate, subtype=subtype)
    (src / "speech.wav").write_bytes(speech[0].read_bytes())
    (src / "notes.txt").write_text("not audio, and not picked up\n")
    main(_encode(path, src, dst, "--batch-size", "4"))
    written = sorted(str(p.relative_to(dst)) for p in dst.rglob("*"))
    expected = sorted([*(n.rsplit(".", 1)[0] + ".npz" for n in files), "speech.npz", "sub"])
    assert written == expected
    for name, (seconds, *_) in files.items():
        with np.load(dst / (name.rsplit(".", 1)[0] + ".npz")) as z:
            num_samples = int(z["num_samples"])
            assert abs(num_samples - seconds * SR) <= 1, name
            assert z["codes"].shape == (Q, -(-num_samples // HOP)), name

    # Batched codes equal the codes of the file encoded alone, though the batch pads speech.wav to
    # 150 frames (to fit b.flac) and the single run to 100. The encoder is causal, so frame t sees
    # only samples up to the end of its own hop and the padding cannot reach frames inside the clip.
    # Only the last frame's window runs past the clip's end into padding, so it may differ.
    with np.load(dst / "speech.npz") as batched, np.load(speech[1]) as alone:
        assert batched["codes"].shape == alone["codes"].shape
        np.testing.assert_array_equal(batched["codes"][:, :-1], alone["codes"][:, :-1])


def test_silence_encodes(codec, tmp_path):
    path, _ = codec
    sf.write(tmp_path / "silence.wav", np.zeros(19_000, np.float32), SR)  # same bucket as speech
    main(_encode(path, tmp_path / "silence.wav", tmp_path / "silence.npz"))
    with np.load(tmp_path / "silence.npz") as z:
        assert z["codes"].shape == (Q, -(-19_000 // HOP))


# -- bad inputs: exit 2, one line naming the file or option, nothing written ----------------------


def _bad_audio(root: Path) -> dict[str, str]:
    (root / "x.wav").write_text("this is not audio\n")
    sf.write(root / "empty.wav", np.zeros((0, 1), np.float32), SR)
    nan = _speech(SR // 2)
    nan[1000] = np.nan
    sf.write(root / "nan.wav", nan, SR, subtype="FLOAT")
    return {
        "missing.wav": "no such",
        "x.wav": "not a readable audio file",
        "empty.wav": "empty audio",
        "nan.wav": "NaN",
    }


def test_bad_audio_files(codec, tmp_path, capsys):
    path, _ = codec
    for name, why in _bad_audio(tmp_path).items():
        out = tmp_path / f"{name}.npz"
        _fails(capsys, _encode(path, tmp_path / name, out), name, why)
        assert not out.exists()


def test_bad_file_in_directory_writes_nothing(codec, tmp_path, capsys):
    path, _ = codec
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "good.wav", _speech(SR), SR)
    (tmp_path / "in" / "x.wav").write_text("this is not audio\n")
    _fails(capsys, _encode(path, tmp_path / "in", tmp_path / "out"), "x.wav")
    assert not (tmp_path / "out").exists()


def test_codes_from_another_codec(codec, speech, tmp_path, capsys):
    other, other_id = tmp_path / "other", _init(tmp_path / "other", "--seed", "1")
    assert other_id != codec[1]
    out = tmp_path / "out.wav"
    _fails(capsys, _decode(other, speech[1], out), "s.npz", codec[1], other_id)
    assert not out.exists()


def test_codes_out_of_range(codec, speech, tmp_path, capsys):
    with np.load(speech[1]) as z:
        arrays = dict(z)
    arrays["codes"][1, 3] = V
    np.savez(tmp_path / "bad.npz", **arrays)
    out = tmp_path / "out.wav"
    _fails(capsys, _decode(codec[0], tmp_path / "bad.npz", out), "bad.npz", "out of range")
    assert not out.exists()


def test_missing_codec_dir(speech, tmp_path, capsys):
    out = tmp_path / "s.npz"
    _fails(capsys, _encode(tmp_path / "nocodec", speech[0], out), "nocodec")
    assert not out.exists()


def test_unknown_config_key(tmp_path, capsys):
    out = tmp_path / "c"
    argv = ["codec", "init", "--config", CONFIG, "--out", str(out), "--config.codec.bogus=1"]
    _fails(capsys, argv, "bogus")
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, name",
    [
        (["codec", "info", "--codec", "x", "--frobnicate"], "--frobnicate"),
        (["codec", "info", "--codec", "x", "--config.seed=1"], "--config.seed=1"),
        (
            ["codec", "init", "--config", CONFIG, "--out", "x", "--config.seed", "1"],
            "--config.seed",
        ),
        (["codec", "convert", "--from", "hub", "x", "--out", "y"], "--from"),
    ],
)
def test_usage_errors_are_one_line(argv, name, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and name in err[0] and f"nclm codec {argv[1]}" in err[0]
