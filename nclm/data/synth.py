"""A local multi-speaker speech corpus from espeak-ng (and flite, when installed).

    synth_corpus("data/synth", num_speakers=24, utterances_per_speaker=20, seed=0)

    data/synth/wavs/spk000/spk000_0000.wav   16-bit PCM at `sample_rate`, silence trimmed
    data/synth/{train,valid,test}.jsonl      manifests (paths relative to data/synth), with text
    data/synth/speakers.json                 each speaker's engine, voice, variant, pitch, speed

A speaker is a fixed (engine, voice, variant, pitch, speed) tuple: espeak-ng English accents
(en-us, en-gb, en-gb-scotland, ...) crossed with its voice variants (+m1.., +f1.., +klatt.., named
ones), each with its own pitch (-p 30..70, default 50) and speed (-s 145..195 wpm, default 175);
flite's kal16/awb/rms/slt with their own duration stretch and mean F0 take every sixth slot while
they last. Sentences come from a small seeded grammar (`sentence`), 4-14 words. The corpus is a
function of (num_speakers, utterances_per_speaker, sample_rate, seed, splits, whether flite is
used). It is for smoke-testing codecs and LMs end to end, not for measuring quality: espeak's
formant voices are far from natural speech.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nclm.atomic import write_atomic
from nclm.audio.io import AudioError, load_audio, save_audio
from nclm.data.manifest import SPLITS, write_manifest

logger = logging.getLogger(__name__)

ESPEAK_VOICES = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
    "en-gb-x-gbcwmd", "en-us-nyc",
)  # fmt: skip
# Variants that sound like people (robots, whispers and croaks left out) and differ from each
# other: klatt6 and caleb render identically to klatt, so they are left out too.
ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "Andy", "Annie", "aunty", "belinda",
    "benjamin", "david", "ed", "edward", "Gene", "iven", "john", "linda", "max", "Michael",
    "Mike", "paul", "rob", "robert", "steph", "quincy", "shelby", "travis", "victor", "norbert",
    "grandpa", "grandma", "Alex", "Alicia", "Lee", "Denis", "adam",
)  # fmt: skip
# flite voices and their approximate natural mean F0 in Hz (the pitch offsets are relative).
FLITE_VOICES = {"kal16": 100.0, "awb": 130.0, "rms": 100.0, "slt": 170.0}
_FLITE_EVERY = 6

_WORDS = {
    "det": "the a this that every one my your our their some each".split(),
    "adj": """old young small large quiet loud bright dark warm cold green blue red yellow
        brown white black silver golden wooden heavy light quick slow gentle rough soft hard
        early late happy tired busy clever simple strange famous hidden empty narrow wide tall
        short sweet bitter fresh ancient modern distant nearby careful honest patient curious
        noisy calm wild tame proud shy lazy brave rapid steady thin thick clean dusty""".split(),
    "noun": """dog cat horse bird fish farmer teacher doctor child baker sailor painter
        driver singer student captain neighbour king queen river mountain forest garden
        village city market bridge tower window door table chair lamp letter book song story
        picture boat train road field island valley castle kitchen school library station
        harbour orchard meadow candle basket bottle clock hammer ladder mirror pocket ribbon
        shadow blanket button carpet engine feather guitar jacket kettle lantern needle pebble
        pillow rocket saddle tunnel violin wagon apple bread cheese coffee honey lemon onion
        pepper potato tomato cloud storm river winter summer morning evening""".split(),
    "verb": """found carried painted opened closed watched followed visited cleaned fixed
        built moved lifted dropped pushed pulled wrapped counted noticed remembered borrowed
        offered described ordered packed picked planted washed chased caught collected
        covered delivered discovered filled guarded hid measured mended polished repaired
        shared sold showed signed touched traded weighed admired answered""".split(),
    "verb_i": """slept waited laughed smiled listened walked wandered rested travelled
        danced whistled shouted hurried paused returned arrived vanished trembled""".split(),
    "adv": """quietly slowly quickly carefully gladly softly early loudly gently suddenly
        calmly happily proudly rarely often together again nearly patiently""".split(),
    "prep": "near behind beside under over across through around inside below above".split(),
    "name": """Anna Ben Clara David Emma Frank Grace Henry Irene Jack Laura Martin Nora
        Oliver Paula Peter Rosa Simon Tina Victor""".split(),
    "time": """yesterday today tonight later afterwards""".split(),
}


class SynthError(ValueError):
    """The corpus cannot be made (a missing program, bad settings); one line saying why."""


def sentence(rng: np.random.Generator) -> str:
    """One sentence of 4-14 words from a small grammar, e.g. "the quiet farmer carried a heavy
    basket across the bridge yesterday." Deterministic for the generator's state."""
    pick = lambda kind: _WORDS[kind][rng.integers(len(_WORDS[kind]))]

    def noun_phrase() -> list[str]:
        if rng.random() < 0.2:
            return [pick("name")]
        words = [pick("det")] + [pick("adj") for _ in range(rng.integers(0, 3))]
        return words + [pick("noun")]

    while True:
        words = noun_phrase()
        if rng.random() < 0.7:
            words += [pick("verb")] + noun_phrase()
        else:
            words += [pick("verb_i")] + ([pick("adv")] if rng.random() < 0.6 else [])
        if rng.random() < 0.6:
            words += [pick("prep")] + noun_phrase()
        if rng.random() < 0.3:
            words += [pick("time")]
        if 4 <= len(words) <= 14:
            break
    words[0] = words[0][0].upper() + words[0][1:]
    return " ".join(words) + ("?" if rng.random() < 0.1 else ".")


def speaker_table(num_speakers: int, seed: int, use_flite: bool) -> list[dict]:
    """`num_speakers` distinct voice settings, the most different ones first (every espeak
    variant once before any repeats, each with a different accent)."""
    rng = np.random.default_rng([seed, 1])
    variants = [ESPEAK_VARIANTS[i] for i in rng.permutation(len(ESPEAK_VARIANTS))]
    voices = [ESPEAK_VOICES[i] for i in rng.permutation(len(ESPEAK_VOICES))]
    flite = list(FLITE_VOICES) if use_flite else []
    table, k = [], 0
    for index in range(num_speakers):
        speaker = f"spk{index:03d}"
        if flite and index % _FLITE_EVERY == _FLITE_EVERY - 1:
            voice = flite.pop(int(rng.integers(len(flite))))
            f0 = round(FLITE_VOICES[voice] * float(rng.uniform(0.85, 1.15)), 1)
            stretch = round(float(rng.uniform(0.85, 1.2)), 3)
            table.append(
                {"speaker": speaker, "engine": "flite", "voice": voice, "variant": None,
                 "pitch": f0, "speed": stretch}
            )  # fmt: skip
            continue
        variant = variants[k % len(variants)]
        voice = voices[(k + k // len(variants)) % len(voices)]
        k += 1
        table.append(
            {"speaker": speaker, "engine": "espeak-ng", "voice": voice, "variant": variant,
             "pitch": int(rng.integers(30, 71)), "speed": int(rng.integers(145, 196))}
        )  # fmt: skip
    return table


def _command(spk: dict, text: str, wav_path: str) -> list[str]:
    if spk["engine"] == "flite":
        return [
            "flite", "-voice", spk["voice"], "--setf", f"duration_stretch={spk['speed']}",
            "--setf", f"int_f0_target_mean={spk['pitch']}", "-t", text, "-o", wav_path,
        ]  # fmt: skip
    return [
        "espeak-ng", "-v", f"{spk['voice']}+{spk['variant']}", "-p", str(spk["pitch"]),
        "-s", str(spk["speed"]), "-w", wav_path, "--", text,
    ]  # fmt: skip


def trim_silence(wav: np.ndarray, sample_rate: int, threshold_db: float = -40.0) -> np.ndarray:
    """Drops leading and trailing 10 ms frames whose RMS is `threshold_db` below the loudest
    frame (and below -60 dBFS at least), keeping 30 ms of margin each side."""
    hop = max(1, sample_rate // 100)
    num_frames = len(wav) // hop
    if num_frames == 0:
        return wav
    rms = np.sqrt(np.mean(wav[: num_frames * hop].reshape(num_frames, hop) ** 2, axis=1))
    threshold = max(rms.max() * 10 ** (threshold_db / 20), 1e-3)
    loud = np.flatnonzero(rms > threshold)
    if loud.size == 0:
        return wav[:0]
    margin = 3 * hop
    return wav[max(0, loud[0] * hop - margin) : min(len(wav), (loud[-1] + 1) * hop + margin)]


def _synthesize(spk: dict, text: str, out_path: Path, sample_rate: int) -> int:
    """Renders one utterance to `out_path`; returns its length in samples. Raises on failure."""
    with tempfile.TemporaryDirectory(prefix="nclm-synth-") as tmp:
        raw = os.path.join(tmp, "raw.wav")
        done = subprocess.run(_command(spk, text, raw), capture_output=True, timeout=60)
        if done.returncode != 0:
            stderr = " ".join(done.stderr.decode(errors="replace").split())[:200]
            raise RuntimeError(f"{spk['engine']} exited with {done.returncode}: {stderr}")
        wav = trim_silence(load_audio(raw, sample_rate), sample_rate)
    if wav.size < sample_rate // 10:
        raise RuntimeError(f"{spk['engine']} produced under 0.1 s of sound")
    peak = float(np.abs(wav).max())
    if peak > 0.95:  # resampling can overshoot; keep headroom rather than clip
        wav = wav * (0.95 / peak)
    save_audio(out_path, wav, sample_rate)
    return int(wav.size)


def _split_counts(num_speakers: int, splits: tuple[int, int, int] | None) -> tuple[int, int, int]:
    if splits is None:
        if num_speakers < 3:
            raise SynthError(
                f"num_speakers={num_speakers}: need at least 3 for train/valid/test speakers, "
                "or pass splits=(train, valid, test)"
            )
        held = max(1, round(num_speakers / 12))
        return num_speakers - 2 * held, held, held
    if len(splits) != 3 or any(not isinstance(c, int) or c < 0 for c in splits):
        raise SynthError(f"splits: expected three speaker counts >= 0, got {splits!r}")
    if sum(splits) != num_speakers or splits[0] < 1:
        raise SynthError(
            f"splits={tuple(splits)}: train/valid/test speaker counts must add up to "
            f"num_speakers={num_speakers}, with at least one training speaker"
        )
    return tuple(splits)


def check_synth_programs(use_flite: bool | None = None) -> bool:
    """Raises SynthError when espeak-ng is missing; returns whether flite will be used."""
    if shutil.which("espeak-ng") is None:
        raise SynthError(
            "espeak-ng not found on PATH: install the Debian package espeak-ng "
            "(apt-get install espeak-ng; Homebrew: brew install espeak-ng)"
        )
    has_flite = shutil.which("flite") is not None
    if use_flite and not has_flite:
        raise SynthError("flite not found on PATH: install the Debian package flite")
    return has_flite if use_flite is None else use_flite


def synth_corpus(
    out_dir: str | os.PathLike,
    num_speakers: int = 24,
    utterances_per_speaker: int = 20,
    sample_rate: int = 16000,
    seed: int = 0,
    splits: tuple[int, int, int] | None = None,
    use_flite: bool | None = None,
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Writes the corpus (layout in the module docstring) and returns a summary: counts per split,
    failed utterances, seconds of audio and wall time. `splits` are speaker counts (default: a
    twelfth of the speakers, at least one, each for valid and test). `use_flite=None` uses flite
    when installed. A failed utterance is skipped, counted and logged; none made is an error."""
    for name, value, low in (
        ("num_speakers", num_speakers, 1),
        ("utterances_per_speaker", utterances_per_speaker, 1),
        ("sample_rate", sample_rate, 8000),
        ("workers", workers, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SynthError(f"{name}: expected an integer >= {low}, got {value!r}")
    counts = _split_counts(num_speakers, splits)
    use_flite = check_synth_programs(use_flite)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SynthError(f"{out_dir}: exists and is not a directory")

    start = time.perf_counter()
    table = speaker_table(num_speakers, seed, use_flite)
    order = np.random.default_rng([seed, 2]).permutation(num_speakers)
    for rank, index in enumerate(order):
        table[index]["split"] = SPLITS[int(rank >= counts[0]) + int(rank >= counts[0] + counts[1])]
    jobs = []
    for index, spk in enumerate(table):
        for utt in range(utterances_per_speaker):
            text = sentence(np.random.default_rng([seed, 3, index, utt]))
            utt_id = f"{spk['speaker']}_{utt:04d}"
            rel = Path("wavs") / spk["speaker"] / f"{utt_id}.wav"
            jobs.append((spk, utt_id, text, rel))

    def run(job):
        spk, utt_id, text, rel = job
        try:
            return _synthesize(spk, text, out_dir / rel, sample_rate), None
        except (OSError, RuntimeError, AudioError, subprocess.SubprocessError) as e:
            return None, f"{utt_id}: {e}"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            tqdm(
                pool.map(run, jobs), total=len(jobs), desc="synth", unit="utt", disable=not progress
            )
        )
    manifests: dict[str, list[dict]] = {name: [] for name in SPLITS}
    failures = [error for _, error in results if error is not None]
    for (spk, utt_id, text, rel), (num_samples, _) in zip(jobs, results, strict=True):
        if num_samples is not None:
            manifests[spk["split"]].append(
                {"utt_id": utt_id, "audio": rel.as_posix(), "duration": num_samples / sample_rate,
                 "speaker": spk["speaker"], "text": text}
            )  # fmt: skip
    if failures:
        logger.warning("synth: %d of %d utterances failed; first: %s", len(failures), len(jobs),
                       failures[0])  # fmt: skip
    if len(failures) == len(jobs):
        raise SynthError(f"{out_dir}: every utterance failed; first: {failures[0]}")
    for name in SPLITS:
        write_manifest(out_dir / f"{name}.jsonl", manifests[name])
    write_atomic(out_dir / "speakers.json", json.dumps(table, indent=1) + "\n")
    return {
        "out_dir": str(out_dir),
        "utterances": {name: len(manifests[name]) for name in SPLITS},
        "speakers": dict(zip(SPLITS, counts, strict=True)),
        "failed": len(failures),
        "audio_seconds": round(sum(r["duration"] for m in manifests.values() for r in m), 2),
        "wall_seconds": round(time.perf_counter() - start, 2),
    }
