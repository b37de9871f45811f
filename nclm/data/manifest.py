"""Manifests: JSONL, one utterance per line, and builders for common corpus layouts.

    {"utt_id": "19-198-0001", "audio": "/data/LibriSpeech/19/198/19-198-0001.flac",
     "duration": 14.85, "speaker": "19", "text": "NORTHANGER ABBEY ..."}

`audio` is absolute or relative to the manifest's own directory (`resolve_audio`), so a corpus
written with relative paths can be moved together with its manifests. `text` is optional; other
keys are kept as they are. Builders read only each file's header (soundfile) for the duration;
a file soundfile cannot read is skipped and counted in one logged warning, never silently.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nclm.atomic import write_atomic
from nclm.audio.io import AUDIO_EXTENSIONS, AudioError, audio_info

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
_REQUIRED = ("utt_id", "audio", "duration", "speaker")


class ManifestError(ValueError):
    """A manifest or corpus tree that cannot be used; one line naming the file (and line)."""


# -- reading and writing --------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """All records of a JSONL manifest; blank lines are allowed. Raises ManifestError naming the
    file and line of the first malformed record or repeated utt_id."""
    return [record for _, record in read_manifest_lines(path)]


def jsonl_records(
    path: str | os.PathLike, text: str, error: type[Exception] = ManifestError
) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed value) for each non-blank line of a JSONL file's `text`; a
    line that is not JSON raises `error` naming the file and line."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                msg = f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})"
                raise error(msg) from None


def read_manifest_lines(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(1-based line number, record) pairs, validated like `read_manifest`."""
    path = Path(path)
    if path.is_dir():
        raise ManifestError(f"{path}: is a directory, expected a JSONL manifest file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: cannot read manifest ({e})") from None
    out, seen = [], {}
    for number, record in jsonl_records(path, text, ManifestError):
        where = f"{path}:{number}"
        _check_record(record, where)
        if record["utt_id"] in seen:
            raise ManifestError(
                f"{where}: utt_id {record['utt_id']!r} repeats line {seen[record['utt_id']]}"
            )
        seen[record["utt_id"]] = number
        out.append((number, record))
    return out


def _check_record(record: object, where: str) -> None:
    if not isinstance(record, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in _REQUIRED if key not in record]
    if missing:
        raise ManifestError(f"{where}: missing key(s) {', '.join(missing)}; expected {_REQUIRED}")
    for key in ("utt_id", "audio", "speaker"):
        if not isinstance(record[key], str) or not record[key]:
            raise ManifestError(f"{where}: {key!r} must be a non-empty string, got {record[key]!r}")
    duration = record["duration"]
    if (
        isinstance(duration, bool)
        or not isinstance(duration, (int, float))
        or not math.isfinite(duration)
        or duration < 0
    ):
        raise ManifestError(f"{where}: 'duration' must be seconds >= 0, got {duration!r}")
    if record.get("text") is not None and not isinstance(record["text"], str):
        raise ManifestError(f"{where}: 'text' must be a string or null, got {record['text']!r}")


def write_manifest(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Writes records as JSONL atomically (temporary file, then rename). `audio` may be a Path;
    it is written as given (make it relative to the manifest's directory yourself if wanted)."""
    path = Path(path)
    lines, seen = [], set()
    for i, record in enumerate(records):
        record = dict(record, audio=os.fspath(record["audio"])) if "audio" in record else record
        _check_record(record, f"{path}: record {i}")
        if record["utt_id"] in seen:
            raise ManifestError(f"{path}: record {i}: utt_id {record['utt_id']!r} repeats")
        seen.add(record["utt_id"])
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    write_atomic(path, "".join(lines))


def resolve_audio(manifest_path: str | os.PathLike, record: dict) -> Path:
    """The record's audio path: absolute as written, or relative to the manifest's directory."""
    audio = Path(record["audio"])
    return audio if audio.is_absolute() else Path(manifest_path).parent / audio


# -- builders -------------------------------------------------------------------------------------


def _audio_files(root: Path) -> list[Path]:
    extensions = {e.lower() for e in AUDIO_EXTENSIONS}
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in extensions and not p.name.startswith(".") and p.is_file()
    )


def _check_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: no such corpus directory")
    return root.resolve()


def _record(path: Path, utt_id: str, speaker: str, text: str | None, skipped: list) -> dict | None:
    try:
        info = audio_info(path)
    except AudioError as e:
        skipped.append((str(path), str(e)))
        return None
    record = {
        "utt_id": utt_id,
        "audio": str(path),
        "duration": round(info.num_samples / info.sample_rate, 6),
        "speaker": speaker,
    }
    if text is not None:
        record["text"] = text
    return record


def _finish(records: list, skipped: list, out: list | None, root: Path, expected: str) -> list:
    records = [r for r in records if r is not None]
    if skipped:
        logger.warning(
            "%s: skipped %d unreadable audio file(s); first: %s",
            root,
            len(skipped),
            skipped[0][1],
        )
    if out is not None:
        out.extend(skipped)
    if not records:
        raise ManifestError(f"{root}: no readable audio found, expected {expected}")
    return records


def manifest_from_folder(root: str | os.PathLike, skipped: list | None = None) -> list[dict]:
    """Every audio file under `root` (any depth); speaker = the parent folder's name; text from a
    sidecar `<name>.txt` or `<name>.lab` when present. Unreadable files are appended to `skipped`
    as (path, reason) when it is given, and always counted in a logged warning."""
    root = _check_root(root)
    bad: list = []
    records, ids = [], set()
    for path in _audio_files(root):
        rel = path.relative_to(root)
        utt_id = rel.with_suffix("").as_posix()
        utt_id = rel.as_posix() if utt_id in ids else utt_id
        ids.add(utt_id)
        text = _sidecar_text(path, (".txt", ".lab"))
        records.append(_record(path, utt_id, path.parent.name, text, bad))
    return _finish(records, bad, skipped, root, "audio files (e.g. SPEAKER/*.wav)")


def _sidecar_text(path: Path, suffixes: tuple[str, ...]) -> str | None:
    for suffix in suffixes:
        side = path.with_name(path.stem + suffix)
        if side.is_file():
            return " ".join(side.read_text(encoding="utf-8", errors="replace").split())
    return None


def manifest_from_librispeech(root: str | os.PathLike, skipped: list | None = None) -> list[dict]:
    """LibriSpeech (SPEAKER/CHAPTER/SPK-CHAP-UTT.flac with SPK-CHAP.trans.txt) or LibriTTS
    (SPEAKER/CHAPTER/*.wav with *.normalized.txt, else *.original.txt, beside each wav), at any
    depth below `root` (a subset folder or the corpus folder holding several subsets)."""
    root = _check_root(root)
    bad: list = []
    records, transcripts, missing_text = [], {}, 0
    for path in _audio_files(root):
        if len(path.relative_to(root).parts) < 3:
            continue  # not SPEAKER/CHAPTER/FILE
        chapter = path.parent
        if chapter not in transcripts:
            transcripts[chapter] = _librispeech_transcripts(chapter)
        text = transcripts[chapter].get(path.stem)
        if text is None:
            text = _sidecar_text(path, (".normalized.txt", ".original.txt"))
        missing_text += text is None
        records.append(_record(path, path.stem, chapter.parent.name, text, bad))
    if missing_text:
        logger.warning("%s: %d utterance(s) have no transcript", root, missing_text)
    expected = "SPEAKER/CHAPTER/*.flac (LibriSpeech) or SPEAKER/CHAPTER/*.wav (LibriTTS)"
    return _finish(records, bad, skipped, root, expected)


def _librispeech_transcripts(chapter: Path) -> dict[str, str]:
    texts = {}
    for trans in chapter.glob("*.trans.txt"):
        for line in trans.read_text(encoding="utf-8", errors="replace").splitlines():
            utt_id, _, text = line.strip().partition(" ")
            if utt_id:
                texts[utt_id] = text.strip()
    return texts


def manifest_from_vctk(
    root: str | os.PathLike, mic: str = "mic1", skipped: list | None = None
) -> list[dict]:
    """VCTK 0.92 (wav48_silence_trimmed/pXXX/pXXX_NNN_mic1.flac) or 0.80 (wav48/pXXX/*.wav), with
    transcripts from txt/pXXX/pXXX_NNN.txt where present. Only `mic`'s recordings are taken."""
    root = _check_root(root)
    audio_dir = next(
        (root / d for d in ("wav48_silence_trimmed", "wav48") if (root / d).is_dir()), None
    )
    if audio_dir is None:
        raise ManifestError(f"{root}: not a VCTK tree, expected wav48_silence_trimmed/ or wav48/")
    bad: list = []
    records = []
    for path in _audio_files(audio_dir):
        stem = path.stem
        if "_mic" in stem:
            stem, _, this_mic = stem.rpartition("_")
            if this_mic != mic:
                continue
        speaker = path.parent.name
        txt = root / "txt" / speaker / f"{stem}.txt"
        text = (
            " ".join(txt.read_text(encoding="utf-8", errors="replace").split())
            if txt.is_file()
            else None
        )
        records.append(_record(path, stem, speaker, text, bad))
    return _finish(records, bad, skipped, root, f"{audio_dir.name}/pXXX/pXXX_NNN[_{mic}].flac|wav")


# -- splits ---------------------------------------------------------------------------------------


def split_by_speaker(
    records: list[dict], valid: int = 1, test: int = 1, seed: int = 0
) -> dict[str, list[dict]]:
    """{"train", "valid", "test"} with `valid` and `test` speakers each and the rest in train, so
    no speaker is in two splits. The choice depends only on the set of speakers and `seed`;
    records keep their order within each split."""
    for name, count in (("valid", valid), ("test", test)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ManifestError(f"{name}: expected a speaker count >= 0, got {count!r}")
    speakers = sorted({r["speaker"] for r in records})
    if len(speakers) <= valid + test:
        raise ManifestError(
            f"{len(speakers)} speaker(s) cannot be split into valid={valid} and test={test} "
            "with at least one training speaker"
        )
    order = np.random.default_rng(seed).permutation(len(speakers))
    chosen = [speakers[i] for i in order]
    split_of = {s: "valid" for s in chosen[:valid]}
    split_of.update({s: "test" for s in chosen[valid : valid + test]})
    out: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for record in records:
        out[split_of.get(record["speaker"], "train")].append(record)
    return out
