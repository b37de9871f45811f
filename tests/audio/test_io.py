"""Audio I/O: every input format reads to float32 mono at the asked rate, bad files fail with one
line naming the file, and writes are atomic."""

import os

import numpy as np
import pytest
import soundfile as sf

from nclm.audio.io import (
    AUDIO_EXTENSIONS,
    AudioError,
    audio_info,
    load_audio,
    output_format,
    save_audio,
    save_npz_atomic,
)


def _tone(seconds: float, sample_rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * sample_rate / len(x)


@pytest.mark.parametrize(
    "name, subtype, tol",
    [
        ("a.wav", "PCM_16", 1e-4),
        ("a.wav", "PCM_24", 1e-6),
        ("a.wav", "PCM_U8", 1e-2),
        ("a.wav", "FLOAT", 0.0),
        ("a.flac", "PCM_16", 1e-4),
        ("a.aiff", "PCM_16", 1e-4),
    ],
)
def test_formats_read_back(tmp_path, name, subtype, tol):
    x = _tone(0.25, 16000)
    sf.write(tmp_path / name, x, 16000, subtype=subtype)
    y = load_audio(tmp_path / name, 16000)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=tol)


def test_ogg_reads(tmp_path):
    sf.write(tmp_path / "a.ogg", _tone(0.5, 16000), 16000)  # Vorbis: lossy, check the pitch
    y = load_audio(tmp_path / "a.ogg", 16000)
    assert abs(len(y) - 8000) <= 1 and abs(_peak_hz(y, 16000) - 440) < 5


def test_stereo_is_averaged(tmp_path):
    left, right = _tone(0.1, 16000), _tone(0.1, 16000, 1000.0)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "s.wav", 16000), (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("rate_in", [8000, 22050, 48000])
def test_resampling_keeps_length_and_pitch(tmp_path, rate_in):
    sf.write(tmp_path / "r.wav", _tone(1.0, rate_in), rate_in, subtype="FLOAT")
    y = load_audio(tmp_path / "r.wav", 16000)
    assert y.dtype == np.float32 and len(y) == 16000
    assert abs(_peak_hz(y, 16000) - 440) < 2


def test_silence_is_valid(tmp_path):
    sf.write(tmp_path / "z.wav", np.zeros(1000, np.float32), 16000)
    assert not load_audio(tmp_path / "z.wav", 16000).any()


def _bad_files(tmp_path):
    (tmp_path / "text.wav").write_text("not audio\n")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 16000)
    for name, value in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        x = _tone(0.1, 16000)
        x[100] = value
        sf.write(tmp_path / name, x, 16000, subtype="FLOAT")
    (tmp_path / "dir.wav").mkdir()
    return {
        "missing.wav": "no such audio file",
        "dir.wav": "is a directory",
        "text.wav": "not a readable audio file",
        "empty.wav": "empty audio",
        "nan.wav": "NaN or Inf",
        "inf.wav": "NaN or Inf",
    }


def test_bad_files_raise_one_line(tmp_path):
    for name, expected in _bad_files(tmp_path).items():
        with pytest.raises(AudioError) as e:
            load_audio(tmp_path / name, 16000)
        message = str(e.value)
        assert name in message and expected in message and "\n" not in message
        if expected not in ("NaN or Inf",):  # the header alone shows everything but the samples
            with pytest.raises(AudioError, match=expected):
                audio_info(tmp_path / name)


def test_audio_info_reads_the_header(tmp_path):
    sf.write(tmp_path / "a.flac", np.zeros((1234, 2), np.float32), 8000)
    assert tuple(audio_info(tmp_path / "a.flac")) == (1234, 8000, 2)


def test_save_audio_is_16_bit_and_clipped(tmp_path):
    x = np.array([0.0, 0.5, -0.25, 1.7, -3.0], np.float32)
    save_audio(tmp_path / "o.wav", x, 16000)
    info = sf.info(tmp_path / "o.wav")
    assert (info.format, info.subtype, info.samplerate) == ("WAV", "PCM_16", 16000)
    y, _ = sf.read(tmp_path / "o.wav", dtype="float32")
    np.testing.assert_allclose(y, np.clip(x, -1, 1), atol=1e-4)
    assert os.listdir(tmp_path) == ["o.wav"]  # no temporary file left behind


def test_save_audio_format_from_extension(tmp_path):
    x = _tone(0.1, 16000)
    save_audio(tmp_path / "o.flac", x, 16000)
    save_audio(tmp_path / "o.wav", x, 16000, subtype="FLOAT")
    assert sf.info(tmp_path / "o.flac").format == "FLAC"
    np.testing.assert_array_equal(sf.read(tmp_path / "o.wav", dtype="float32")[0], x)
    with pytest.raises(AudioError, match=r"o\.xyz"):
        output_format(tmp_path / "o.xyz")
    with pytest.raises(AudioError):
        save_audio(tmp_path / "o.xyz", x, 16000)
    assert sorted(os.listdir(tmp_path)) == ["o.flac", "o.wav"]


def test_failed_write_leaves_the_old_file(tmp_path):
    save_audio(tmp_path / "o.wav", np.zeros(10), 16000)
    before = (tmp_path / "o.wav").read_bytes()
    with pytest.raises(ValueError):  # soundfile: 8-bit signed PCM does not exist in wav
        save_audio(tmp_path / "o.wav", np.ones(10), 16000, subtype="PCM_S8")
    assert (tmp_path / "o.wav").read_bytes() == before
    assert os.listdir(tmp_path) == ["o.wav"]


def test_save_npz_atomic_writes_the_exact_name(tmp_path):
    for name in ("codes.npz", "codes.bin"):
        save_npz_atomic(tmp_path / "sub" / name, codes=np.arange(6).reshape(2, 3), codec_id="x")
        with np.load(tmp_path / "sub" / name) as z:
            assert z["codes"].shape == (2, 3) and str(z["codec_id"]) == "x"
    assert sorted(os.listdir(tmp_path / "sub")) == ["codes.bin", "codes.npz"]


def test_extensions_are_lower_case_with_dot():
    assert all(e.startswith(".") and e == e.lower() for e in AUDIO_EXTENSIONS)
    assert {".wav", ".flac", ".ogg", ".mp3"} <= set(AUDIO_EXTENSIONS)
