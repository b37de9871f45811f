"""The grain pipeline that feeds LM training: token-budget batches from `nclm tokens extract`
shards, in a fixed grid of static shapes.

    it = make_token_iterator("tokens/train", text_buckets=(32, 64, 128, 256),
                             frame_buckets=(64, 128, 256, 512, 1024), max_tokens=32768, seed=0,
                             row_multiple=batch_shards(mesh))
    batch = next(it)    # this host's rows of one global batch:
    # {"text": int32[B, Lt]  BOS + ids + EOS, 0-padded     "text_len": int32[B]  (0: empty row)
    #  "codes": int32[B, Q, T]  0-padded                   "code_len": int32[B]  frames
    #  "semantic": int32[B, T]  0-padded, only when the records have semantic ids
    #  with SpeechX records (index "tasks", nclm.tasks.simulate_shards), "text" is the whole
    #  prefix [BOS, text, EOS, acoustic prompt] and the batch adds "prefix_kind" int32[B, Lt],
    #  "prefix_codes" int32[B, Q, Lt], "task" int32[B], "target_start" int32[B]}

`semantic` (from `nclm tokens extract --semantic`) is aligned with the codes: frame t of row b
has the semantic id semantic[b, t] (index["semantic"]["num_clusters"] of them); padding frames
hold 0, a valid id, so code_len is the mask for both.

Buckets: an example with L text ids and T frames goes to the smallest text bucket Lt >= L + 2
(room for BOS and EOS) and the smallest frame bucket >= T + 1 (room for the EOS frame the LM
predicts); one larger than the largest bucket is skipped (counted, logged once per epoch).
A bucket (Lt, T) has a fixed number of global rows

    B = max(m, floor(max_tokens / (Lt + T)) rounded down to a multiple of m)

where m = `row_multiple` (the number of batch shards of the mesh), so a batch holds at most
`max_tokens` text + frame positions unless one row of each shard already exceeds it. Only
`len(text_buckets) * len(frame_buckets)` shapes exist, so the step compiles that many times at
most.

Epoch plan, a function of (seed, epoch) and the index's lengths only (no record is read):
shuffle the example ids, deal them in that order into per-bucket batches, pad each bucket's last
partial batch with empty rows (id -1), shuffle the batch order. Every kept example appears once
per epoch, and every epoch has the same number of batches N. The iterator walks epochs forever;
batch k of the stream is batch k % N of epoch k // N, read by grain threads ahead of time.
Each host reads only its contiguous row slice of every global batch (`host_batch_slice`).

Checkpointing the position: `get_state()` is `{"epoch": e, "position": p}` (JSON-serialisable);
`set_state(state)` on a fresh iterator with the same arguments resumes the identical batches.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import grain
import numpy as np

from nclm.data.tokens import FORMAT, INDEX, SYMBOLS, decode_record
from nclm.text.symbols import BOS_ID, EOS_ID, SymbolTable

logger = logging.getLogger(__name__)

_FOREVER = 2**62  # batches in the stream (the plan repeats epochs without end)
EMPTY = -1  # example id of a padding row


class TokenDataset:
    """Random access to the records of a tokens directory, with the index's lengths in memory:
    `text_len` int32[N] (ids, no bos/eos) and `frames` int32[N]."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        index_file = self.path / INDEX
        if not index_file.is_file():
            raise FileNotFoundError(
                f"{self.path}: no {INDEX} (expected the output of `nclm tokens extract`)"
            )
        try:
            self.index = json.loads(index_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{index_file}: invalid JSON ({e})") from None
        if self.index.get("format") != FORMAT:
            raise ValueError(
                f"{index_file}: format is {self.index.get('format')!r}, expected {FORMAT!r}"
            )
        self.symbols = SymbolTable.load(self.path / self.index.get("symbols", SYMBOLS))
        shards = self.index["shards"]
        files = [self.path / s["file"] for s in shards]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index_file}: lists missing shard(s) {', '.join(missing)}")
        self.text_len = np.array([n for s in shards for n in s["text_len"]], np.int32)
        self.frames = np.array([n for s in shards for n in s["frames"]], np.int32)
        self.num_codebooks = int(self.index["num_codebooks"])
        self.semantic = self.index.get("semantic")  # None, or the tokenizer facts of the index
        self.multitask = "tasks" in self.index  # SpeechX records (nclm.lm.speechx layouts)
        self._source = grain.sources.ArrayRecordDataSource([str(f) for f in files])
        if len(self._source) != len(self.text_len):
            raise ValueError(
                f"{self.path}: shards hold {len(self._source)} records, {INDEX} lists "
                f"{len(self.text_len)}"
            )

    def __len__(self) -> int:
        return len(self.text_len)

    def __getitem__(self, i: int) -> dict:
        return decode_record(self._source[int(i)])

    def records(self, ids: Sequence[int]) -> list[dict]:
        if not len(ids):  # array_record's parallel read refuses an empty list
            return []
        return [decode_record(b) for b in self._source.__getitems__([int(i) for i in ids])]


# -- buckets and plans --------------------------------------------------------------------------


def batch_rows(text_bucket: int, frame_bucket: int, max_tokens: int, row_multiple: int) -> int:
    """Global rows of bucket (Lt, T): the token budget, floored to a multiple of row_multiple."""
    rows = max_tokens // (text_bucket + frame_bucket) // row_multiple * row_multiple
    return max(row_multiple, rows)


class BucketGrid:
    """Which (Lt, T) bucket each example falls in, and the rows of each bucket."""

    def __init__(self, text_len, frames, text_buckets, frame_buckets, max_tokens, row_multiple):
        _check_buckets("text_buckets", text_buckets)
        _check_buckets("frame_buckets", frame_buckets)
        for name, value in (("max_tokens", max_tokens), ("row_multiple", row_multiple)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        self.text_buckets, self.frame_buckets = tuple(text_buckets), tuple(frame_buckets)
        t = np.searchsorted(self.text_buckets, np.asarray(text_len) + 2)  # BOS + EOS
        f = np.searchsorted(self.frame_buckets, np.asarray(frames) + 1)  # EOS frame
        fits = (t < len(self.text_buckets)) & (f < len(self.frame_buckets))
        self.bucket = np.where(fits, t * len(self.frame_buckets) + f, -1)  # [N], -1: skipped
        self.kept = np.flatnonzero(fits)
        self.num_skipped = int((~fits).sum())
        if not self.kept.size:
            raise ValueError(
                f"no example fits the largest buckets (text {self.text_buckets[-1]}, frames "
                f"{self.frame_buckets[-1]}); longest has {int(np.max(text_len))} text ids, "
                f"{int(np.max(frames))} frames"
            )
        self.rows = {
            b: batch_rows(self.shape(b)[0], self.shape(b)[1], max_tokens, row_multiple)
            for b in np.unique(self.bucket[self.kept]).tolist()
        }
        counts = np.bincount(self.bucket[self.kept], minlength=max(self.rows) + 1)
        self.num_batches = sum(-(-int(counts[b]) // rows) for b, rows in self.rows.items())

    def shape(self, b: int) -> tuple[int, int]:
        """(Lt, T) of bucket number b."""
        t, f = divmod(int(b), len(self.frame_buckets))
        return self.text_buckets[t], self.frame_buckets[f]

    def deal(self, order: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(bucket, ids[B]) batches dealing `order` into buckets; partial batches padded with
        EMPTY at the end, in bucket order."""
        pending: dict[int, list[int]] = {b: [] for b in self.rows}
        batches = []
        for i in order.tolist():
            b = int(self.bucket[i])
            pending[b].append(i)
            if len(pending[b]) == self.rows[b]:
                batches.append((b, np.array(pending[b], np.int64)))
                pending[b] = []
        for b, ids in sorted(pending.items()):
            if ids:
                batches.append((b, np.array(ids + [EMPTY] * (self.rows[b] - len(ids)), np.int64)))
        return batches

    def plan(self, seed: int, epoch: int) -> list[tuple[int, np.ndarray]]:
        rng = np.random.default_rng([seed, epoch])
        batches = self.deal(rng.permutation(self.kept))
        return [batches[j] for j in rng.permutation(len(batches))]


def _check_buckets(name: str, buckets) -> None:
    values = list(buckets) if isinstance(buckets, (list, tuple)) else None
    if (
        not values
        or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values)
        or values[0] < 1
        or any(a >= b for a, b in zip(values, values[1:]))
    ):
        raise ValueError(f"{name}: expected increasing positive integers, got {buckets!r}")


def _host_slice(global_rows: int, host_index: int | None, host_count: int | None):
    """(start, size) of this host's rows, as nclm.sharding.host_batch_slice."""
    if host_index is None and host_count is None:
        from nclm.sharding import host_batch_slice

        return host_batch_slice(global_rows)
    if host_index is None or host_count is None or not 0 <= host_index < host_count:
        raise ValueError(f"host_index {host_index}, host_count {host_count}: expected 0 <= i < n")
    if global_rows % host_count:
        raise ValueError(f"global batch {global_rows} is not divisible by {host_count} hosts")
    size = global_rows // host_count
    return host_index * size, size


# -- batches ------------------------------------------------------------------------------------


def load_batch(dataset: TokenDataset, grid: BucketGrid, b: int, ids: np.ndarray) -> dict:
    """The batch dict of the module docstring for example ids (EMPTY: an all-zero row)."""
    text_bucket, frame_bucket = grid.shape(b)
    rows = len(ids)
    text = np.zeros((rows, text_bucket), np.int32)  # [B, Lt]
    codes = np.zeros((rows, dataset.num_codebooks, frame_bucket), np.int32)  # [B, Q, T]
    text_len = np.zeros(rows, np.int32)
    code_len = np.zeros(rows, np.int32)
    semantic = np.zeros((rows, frame_bucket), np.int32) if dataset.semantic else None  # [B, T]
    tasks = _TaskArrays(rows, dataset.num_codebooks, text_bucket) if dataset.multitask else None
    real = [row for row, i in enumerate(ids) if i != EMPTY]
    for row, record in zip(real, dataset.records([ids[row] for row in real])):
        ids_l, codes_qt = record["text"], record["codes"]
        if tasks is not None:  # the whole prefix; the index holds its length - 2
            ids_l = record["prefix"][1:-1]
        length, num_frames = len(ids_l), codes_qt.shape[1]
        sem_frames = len(record["semantic"]) if "semantic" in record else None
        if (length, num_frames) != (dataset.text_len[ids[row]], dataset.frames[ids[row]]) or (
            semantic is not None and sem_frames != num_frames
        ):
            raise ValueError(
                f"{dataset.path}: record {ids[row]} ({record['utt_id']}) does not match {INDEX} "
                f"({length} text ids, {num_frames} frames, semantic ids for {sem_frames})"
            )
        if tasks is not None:
            text[row, : length + 2] = record["prefix"]
            tasks.fill(row, record)
        else:
            text[row, 0], text[row, 1 : length + 1], text[row, length + 1] = BOS_ID, ids_l, EOS_ID
        text_len[row] = length + 2
        codes[row, :, :num_frames] = codes_qt
        code_len[row] = num_frames
        if semantic is not None:
            semantic[row, :num_frames] = record["semantic"]
    batch = {"text": text, "text_len": text_len, "codes": codes, "code_len": code_len}
    if semantic is not None:
        batch["semantic"] = semantic
    if tasks is not None:
        batch.update(tasks.arrays())
    return batch


class _TaskArrays:
    """The SpeechX arrays of a batch (module docstring)."""

    def __init__(self, rows: int, num_codebooks: int, text_bucket: int):
        self.kind = np.zeros((rows, text_bucket), np.int32)
        self.codes = np.zeros((rows, num_codebooks, text_bucket), np.int32)
        self.task = np.zeros(rows, np.int32)
        self.start = np.zeros(rows, np.int32)

    def fill(self, row: int, record: dict) -> None:
        n = len(record["prefix"])
        self.kind[row, :n] = record["prefix_kind"]
        self.codes[row, :, :n] = record["prefix_codes"]
        self.task[row], self.start[row] = record["task"], record["target_start"]

    def arrays(self) -> dict:
        return {
            "prefix_kind": self.kind,
            "prefix_codes": self.codes,
            "task": self.task,
            "target_start": self.start,
        }


class _StreamLoader:
    """grain map: stream position k -> this host's rows of batch k % N of epoch k // N. Plans
    are cached per epoch (grain threads read ahead, possibly into the next epoch)."""

    def __init__(self, dataset, grid, seed, host_index, host_count):
        self.dataset, self.grid, self.seed = dataset, grid, seed
        self.host_index, self.host_count = host_index, host_count
        self._lock = threading.Lock()
        self._plans: dict[int, list] = {}

    def plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        with self._lock:
            if epoch not in self._plans:
                if self.grid.num_skipped:
                    logger.info(
                        "%s: epoch %d: skipped %d of %d examples longer than the largest buckets",
                        self.dataset.path,
                        epoch,
                        self.grid.num_skipped,
                        len(self.dataset),
                    )
                self._plans[epoch] = self.grid.plan(self.seed, epoch)
                for old in [e for e in self._plans if e < epoch - 1]:
                    del self._plans[old]
            return self._plans[epoch]

    def __call__(self, k: int) -> dict:
        epoch, position = divmod(int(k), self.grid.num_batches)
        b, ids = self.plan(epoch)[position]
        start, size = _host_slice(len(ids), self.host_index, self.host_count)
        return load_batch(self.dataset, self.grid, b, ids[start : start + size])


class TokenIterator:
    """Endless batches with `get_state()` -> {"epoch", "position"} and `set_state(state)`."""

    def __init__(self, loader: _StreamLoader, read_threads: int, prefetch: int):
        self.num_batches = loader.grid.num_batches  # per epoch
        self.grid = loader.grid
        self._dataset = loader.dataset
        options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
        dataset = grain.MapDataset.range(0, _FOREVER).map(loader).to_iter_dataset(options)
        self._iter = iter(dataset)

    def __iter__(self) -> TokenIterator:
        return self

    def __next__(self) -> dict:
        return next(self._iter)

    def bucket_batches(self) -> list[dict]:
        """One all-padding global batch (every row empty) per bucket the epoch plans use: the
        shapes and dtypes of every batch this stream yields, read from no record, so a trainer can
        compile its step for each before the first (nclm.train.precompile)."""
        return [
            load_batch(self._dataset, self.grid, b, np.full(rows, EMPTY, np.int64))
            for b, rows in sorted(self.grid.rows.items())
        ]

    def get_state(self) -> dict:
        epoch, position = divmod(int(self._iter.get_state()["next_index"]), self.num_batches)
        return {"epoch": epoch, "position": position}

    def set_state(self, state: dict) -> None:
        epoch, position = state.get("epoch"), state.get("position")
        if not (isinstance(epoch, int) and isinstance(position, int)) or epoch < 0:
            raise ValueError(f"token iterator state {state!r}: expected {{'epoch', 'position'}}")
        if not 0 <= position < self.num_batches:
            raise ValueError(
                f"token iterator state {state!r}: position must be < {self.num_batches} "
                "(batches per epoch); was it saved with other buckets or max_tokens?"
            )
        self._iter.set_state({"next_index": epoch * self.num_batches + position})


def make_token_iterator(
    path: str | os.PathLike,
    text_buckets: Sequence[int],
    frame_buckets: Sequence[int],
    max_tokens: int,
    seed: int,
    row_multiple: int = 1,
    host_index: int | None = None,
    host_count: int | None = None,
    read_threads: int = 4,
    prefetch: int = 4,
) -> TokenIterator:
    """The training stream of the module docstring. `host_index`/`host_count` default to
    jax.process_index()/process_count()."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    dataset = TokenDataset(path)
    grid = BucketGrid(
        dataset.text_len, dataset.frames, text_buckets, frame_buckets, max_tokens, row_multiple
    )
    _host_slice(row_multiple, host_index, host_count)  # every B is a multiple: checks them all
    loader = _StreamLoader(dataset, grid, int(seed), host_index, host_count)
    return TokenIterator(loader, read_threads, prefetch)


def make_eval_batches(
    path: str | os.PathLike,
    text_buckets: Sequence[int],
    frame_buckets: Sequence[int],
    max_tokens: int,
    row_multiple: int = 1,
    host_index: int | None = None,
    host_count: int | None = None,
    max_batches: int | None = None,
) -> list[dict]:
    """The whole split once, as this host's rows of fixed batches: ids in order, dealt into
    buckets, batches in bucket order (no shuffle). Examples too long for the buckets are skipped
    with a logged warning. `max_batches` keeps that many, taken round-robin over the buckets so
    short and long utterances are both evaluated (and only those are read)."""
    dataset = TokenDataset(path)
    grid = BucketGrid(
        dataset.text_len, dataset.frames, text_buckets, frame_buckets, max_tokens, row_multiple
    )
    _host_slice(row_multiple, host_index, host_count)
    if grid.num_skipped:
        logger.warning(
            "%s: %d of %d examples are longer than the largest buckets and not evaluated",
            path,
            grid.num_skipped,
            len(dataset),
        )
    batches = sorted(grid.deal(grid.kept), key=lambda batch: batch[0])  # stable: ids in order
    if max_batches is not None and len(batches) > max_batches:
        by_bucket: dict[int, list] = {}
        for batch in batches:
            by_bucket.setdefault(batch[0], []).append(batch)
        queues, batches = list(by_bucket.values()), []
        while len(batches) < max_batches:
            for queue in queues:
                if queue and len(batches) < max_batches:
                    batches.append(queue.pop(0))
        batches.sort(key=lambda batch: batch[0])
    out = []
    for b, ids in batches:
        start, size = _host_slice(len(ids), host_index, host_count)
        out.append(load_batch(dataset, grid, b, ids[start : start + size]))
    return out
