"""Audio files in and out: soundfile for every format it reads, soxr for resampling.

    wav = load_audio("clip.flac", 16000)        # float32[S], mono, at 16 kHz
    save_audio("out.wav", wav, 16000)           # 16-bit PCM, written atomically

Every write goes to a temporary file in the destination's directory and is renamed into place, so
an interrupted command never leaves a truncated file under the final name. Bad inputs raise
`AudioError` with one line naming the file and what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr

from nclm.atomic import atomic_path

# Extensions picked up when a command scans a directory for audio.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".opus", ".aiff", ".aif")

# Extensions whose soundfile format name is not the extension itself.
_FORMAT_ALIASES = {"AIF": "AIFF", "OPUS": "OGG", "OGA": "OGG"}


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and what was expected."""


class AudioInfo(NamedTuple):
    num_samples: int  # per channel, at the file's own rate
    sample_rate: int
    num_channels: int


def _check_input(path: Path) -> None:
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, expected an audio file")
    if not path.exists():
        raise AudioError(f"{path}: no such audio file")


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Reads only the header (frames, samplerate, channels); raises AudioError for non-audio or
    empty files. Cheap, so commands call it on every input before writing anything."""
    path = Path(path)
    _check_input(path)
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError) as e:
        raise AudioError(f"{path}: not a readable audio file ({_one_line(e)})") from None
    except OSError as e:
        raise AudioError(f"{path}: cannot read ({e.strerror})") from None
    if info.frames == 0:
        raise AudioError(f"{path}: empty audio (0 samples), expected at least one sample")
    return AudioInfo(info.frames, info.samplerate, info.channels)


def load_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Any soundfile-readable file -> float32[S] mono (mean of channels) at `sample_rate`."""
    path = Path(path)
    _check_input(path)
    try:
        x, sr_in = sf.read(str(path), dtype="float32", always_2d=True)  # [S, C]
    except (sf.SoundFileError, RuntimeError) as e:
        raise AudioError(f"{path}: not a readable audio file ({_one_line(e)})") from None
    except OSError as e:
        raise AudioError(f"{path}: cannot read ({e.strerror})") from None
    if x.shape[0] == 0:
        raise AudioError(f"{path}: empty audio (0 samples), expected at least one sample")
    if not np.isfinite(x).all():
        raise AudioError(f"{path}: contains NaN or Inf samples, expected finite audio")
    x = x.mean(axis=1, dtype=np.float32)
    if sr_in != sample_rate:
        x = soxr.resample(x, sr_in, sample_rate, quality="HQ").astype(np.float32, copy=False)
        if x.size == 0:
            raise AudioError(f"{path}: too short to resample from {sr_in} Hz to {sample_rate} Hz")
    return x


def output_format(path: str | os.PathLike) -> str:
    """The soundfile format name for an output path's extension; AudioError if none fits."""
    path = Path(path)
    fmt = path.suffix[1:].upper()
    fmt = _FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in sf.available_formats():
        raise AudioError(
            f"{path}: cannot write audio with extension {path.suffix!r}; "
            "expected e.g. .wav or .flac"
        )
    return fmt


def save_audio(
    path: str | os.PathLike, wav: np.ndarray, sample_rate: int, subtype: str | None = None
) -> None:
    """Writes float[S] (or [S, C]) clipped to [-1, 1]; the format follows the extension.
    `subtype` defaults to 16-bit PCM where the format has it (wav, flac, aiff), else the format's
    own default (e.g. Vorbis for .ogg)."""
    path = Path(path)
    fmt = output_format(path)
    wav = np.asarray(wav, np.float32)
    if wav.ndim not in (1, 2):
        raise ValueError(
            f"{path}: expected audio of shape [samples] or [samples, channels], got {wav.shape}"
        )
    if not np.isfinite(wav).all():
        raise ValueError(f"{path}: refusing to write NaN or Inf samples")
    if subtype is None:
        subtype = "PCM_16" if sf.check_format(fmt, "PCM_16") else sf.default_subtype(fmt)
        if path.suffix.lower() == ".opus":
            subtype = "OPUS"
    with atomic_path(path, path.suffix) as tmp:
        sf.write(tmp, np.clip(wav, -1.0, 1.0), sample_rate, subtype=subtype, format=fmt)


def save_npz_atomic(path: str | os.PathLike, **arrays) -> None:
    """np.savez, written to a temporary sibling and renamed into place."""
    # The temporary name ends in .npz: np.savez would append it otherwise and write elsewhere.
    with atomic_path(Path(path), ".npz") as tmp:
        np.savez(tmp, **arrays)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
