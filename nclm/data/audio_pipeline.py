"""The grain pipeline that feeds codec training: random fixed-length crops of manifest audio.

    records ─▶ shuffle(seed) ─▶ repeat(num_epochs)
            ─▶ random_map(load at sample_rate, random crop of S, gain)
            ─▶ [this host's rows of each global batch] ─▶ batch(B, drop_remainder)
            ─▶ {"wav": float32[B, S], "mask": float32[B, S]}     mask: 1 for real samples

Every random choice (order, crop offset, gain) is a function of the seed and the element's
position in the one global order, so a run is deterministic for a seed whatever the number of
reader threads, and on several hosts (pass jax.process_index() / jax.process_count() as
shard_index / shard_count) host h reads rows [h * B, (h + 1) * B) of every global batch of
shard_count * B clips: N hosts train on exactly the batches one host would.

Clips shorter than S are zero-padded at the end with the mask marking the real samples
(`short="pad"`) or dropped (`short="skip"`); how many were padded or skipped is logged once per
epoch, when the epoch's last clip has been read (an epoch interrupted by a restore is not
reported). Gain: each crop is scaled so that its RMS over the real samples is a level drawn
uniformly from `gain_db_range` dBFS (default -30 to -18), then scaled down where needed so its
peak is at most 0.99; crops quieter than -80 dBFS RMS are left as they are. `gain_db_range=None`
keeps the file's own level.

Checkpointing the position: the iterator's `get_state()` is a small JSON-serialisable dict
(`{"next_index": k}`); save it beside the train state (nclm.train.checkpoint stores it with
orbax `ocp.args.JsonSave`) and call `set_state(state)` on a fresh `make_iterator(...)` with the
same arguments; the following batches are those the uninterrupted run would have produced.
"""

from __future__ import annotations

import logging
import os
import threading

import grain
import numpy as np

from nclm.audio.io import AudioError, audio_info, load_audio
from nclm.data.manifest import ManifestError, read_manifest_lines, resolve_audio

logger = logging.getLogger(__name__)

_SILENT_RMS = 1e-4  # -80 dBFS
_PEAK = 0.99


def validate_manifest(path: str | os.PathLike) -> list[dict]:
    """Checks up front that every record's audio file exists and has a readable header; raises
    ManifestError naming the manifest line and the first bad file. Returns the records."""
    lines = read_manifest_lines(path)
    for number, record in lines:
        try:
            audio_info(resolve_audio(path, record))
        except AudioError as e:
            raise ManifestError(f"{path}:{number}: {e}") from None
    return [record for _, record in lines]


class _CropReader:
    """random_map transform: (position, record) -> {"wav", "mask"} or None (a skipped clip).
    Counts short clips per epoch (threads share it, hence the lock)."""

    def __init__(self, manifest, sample_rate, segment_samples, short, gain_db_range, rows):
        self.manifest = str(manifest)
        self.sample_rate = sample_rate
        self.segment_samples = segment_samples
        self.short = short
        self.gain_db_range = gain_db_range
        self.rows = rows  # which positions this host reads
        self.epoch_size = 0  # records per epoch
        self._lock = threading.Lock()
        self._epochs: dict[int, list[int]] = {}  # epoch -> [clips read, short clips]

    def __call__(self, item: tuple[int, dict], rng: np.random.Generator) -> dict | None:
        position, record = item
        try:
            wav = load_audio(record["audio"], self.sample_rate)
        except AudioError as e:
            raise AudioError(f"{self.manifest}:{record['line']}: {e}") from None
        num = self.segment_samples
        is_short = wav.size < num
        self._count(position // self.epoch_size, is_short)
        if is_short and self.short == "skip":
            return None
        mask = np.ones(num, np.float32)
        if is_short:
            mask[wav.size :] = 0.0
            wav = np.pad(wav, (0, num - wav.size))
        else:
            start = int(rng.integers(0, wav.size - num + 1))
            wav = wav[start : start + num]
        if self.gain_db_range is not None:
            wav = _normalise_gain(wav, wav[: int(mask.sum())], rng, self.gain_db_range)
        return {"wav": wav.astype(np.float32, copy=False), "mask": mask}

    def __getstate__(self) -> dict:  # picklable for grain's multiprocess prefetch
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _count(self, epoch: int, is_short: bool) -> None:
        with self._lock:
            counts = self._epochs.setdefault(epoch, [0, 0])
            counts[0] += 1
            counts[1] += is_short
            start = epoch * self.epoch_size
            if counts[0] < self.rows.count(start, start + self.epoch_size):
                return
            del self._epochs[epoch]
        if not counts[1]:
            return
        verb = "skipped" if self.short == "skip" else "zero-padded"
        logger.info(
            "%s: epoch %d: %d of %d clips shorter than %d samples were %s",
            self.manifest,
            epoch,
            counts[1],
            counts[0],
            self.segment_samples,
            verb,
        )
        if self.short == "skip" and counts[1] == counts[0]:
            raise ValueError(
                f"{self.manifest}: every clip this host read in an epoch is shorter than the "
                f"{self.segment_samples}-sample segment; use short='pad' or shorter segments"
            )


def _with_position(position: int, record: dict) -> tuple[int, dict]:
    return position, record


class _HostRows:
    """Host h of n reads rows [h * B, (h + 1) * B) of every global batch of n * B positions."""

    def __init__(self, batch_size: int, index: int, count: int):
        self.batch, self.index, self.count_hosts = batch_size, index, count

    def position(self, j: int) -> int:
        """The global position of this host's j-th element."""
        return (
            (j // self.batch) * self.batch * self.count_hosts
            + self.index * self.batch
            + (j % self.batch)
        )

    def count(self, start: int, stop: int) -> int:
        """How many of the positions [start, stop) this host reads."""

        def below(n: int) -> int:
            full, rest = divmod(n, self.batch * self.count_hosts)
            return full * self.batch + min(max(rest - self.index * self.batch, 0), self.batch)

        return below(stop) - below(start)

    def reader_of(self, ds: grain.MapDataset):
        return _ReadAt(ds, self)


class _ReadAt:
    """map transform: this host's element j -> element `rows.position(j)` of the global `ds`."""

    def __init__(self, ds, rows: _HostRows):
        self.ds, self.rows = ds, rows

    def __call__(self, j: int):
        return self.ds[self.rows.position(int(j))]


def _normalise_gain(wav, real, rng, gain_db_range) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(real, dtype=np.float64)))) if real.size else 0.0
    target_db = float(rng.uniform(*gain_db_range))  # drawn always: same rng use for every clip
    if rms < _SILENT_RMS:
        return wav
    gain = 10 ** (target_db / 20) / rms
    peak = float(np.abs(wav).max())
    return wav * min(gain, _PEAK / peak)


def audio_dataset(
    manifest_path: str | os.PathLike,
    sample_rate: int,
    segment_samples: int,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
    gain_db_range: tuple[float, float] | None = (-30.0, -18.0),
    short: str = "pad",
    read_threads: int = 4,
) -> grain.IterDataset:
    """The pipeline of the module docstring as a grain IterDataset (iterate it, or use
    `make_iterator`). `num_epochs=None` repeats forever. Raises ManifestError/ValueError with
    one line for bad arguments, an empty shard, or (short="skip") no clip long enough according
    to the manifest's durations."""
    _check_arguments(
        sample_rate, segment_samples, batch_size, shard_index, shard_count, num_epochs,
        gain_db_range, short, read_threads,
    )  # fmt: skip
    lines = read_manifest_lines(manifest_path)
    records = [
        {"audio": str(resolve_audio(manifest_path, r)), "line": n, "duration": r["duration"]}
        for n, r in lines
    ]
    if not records:
        raise ManifestError(f"{manifest_path}: no records")
    if short == "skip" and all(r["duration"] * sample_rate < segment_samples for r in records):
        raise ManifestError(
            f"{manifest_path}: short='skip' but no clip is at least "
            f"{segment_samples} samples ({segment_samples / sample_rate:g} s) long"
        )
    global_batch = batch_size * shard_count
    if num_epochs is not None and len(records) * num_epochs < global_batch:
        raise ValueError(
            f"batch_size={batch_size} x {shard_count} host(s): larger than the "
            f"{len(records) * num_epochs} clips of {num_epochs} epoch(s); no batch would be made"
        )
    rows = _HostRows(batch_size, shard_index, shard_count)
    reader = _CropReader(manifest_path, sample_rate, segment_samples, short, gain_db_range, rows)
    reader.epoch_size = len(records)
    # Independent streams for the order and the per-clip randomness, both fixed by `seed`.
    order_seed, clip_seed = np.random.SeedSequence(seed).generate_state(2)
    ds = (
        grain.MapDataset.source(records)
        .shuffle(seed=int(order_seed))
        .repeat(num_epochs)
        .map_with_index(_with_position)
        .random_map(reader, seed=int(clip_seed))
    )
    if shard_count > 1:
        ds = grain.MapDataset.range(len(ds) // global_batch * batch_size).map(rows.reader_of(ds))
    options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * batch_size)
    return ds.to_iter_dataset(options).batch(batch_size, drop_remainder=True)


def make_iterator(*args, **kwargs) -> grain.DatasetIterator:
    """`iter(audio_dataset(...))` (same arguments): a grain DatasetIterator with
    get_state()/set_state()."""
    return iter(audio_dataset(*args, **kwargs))


def _check_arguments(
    sample_rate,
    segment_samples,
    batch_size,
    shard_index,
    shard_count,
    num_epochs,
    gain_db_range,
    short,
    read_threads,
) -> None:
    for name, value, low in (
        ("sample_rate", sample_rate, 1),
        ("segment_samples", segment_samples, 1),
        ("batch_size", batch_size, 1),
        ("shard_count", shard_count, 1),
        ("read_threads", read_threads, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(
            f"shard_index: expected 0 <= shard_index < {shard_count}, got {shard_index}"
        )
    if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs < 1):
        raise ValueError(
            f"num_epochs: expected None (forever) or an integer >= 1, got {num_epochs!r}"
        )
    if short not in ("pad", "skip"):
        raise ValueError(f"short: expected 'pad' or 'skip', got {short!r}")
    if gain_db_range is not None:
        low, high = gain_db_range
        if not low <= high <= 0:
            raise ValueError(
                f"gain_db_range: expected (low, high) dBFS with low <= high <= 0, "
                f"got {tuple(gain_db_range)}"
            )
