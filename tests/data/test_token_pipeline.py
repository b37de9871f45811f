"""The LM token pipeline on a fake tokens directory (records written directly in the extraction
format): static shapes from the bucket grid, every example once per epoch, the token budget,
determinism, resuming from a saved state, host slices, and the fixed evaluation batches."""

import json
import logging

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from nclm.data.token_pipeline import (
    TokenDataset,
    batch_rows,
    make_eval_batches,
    make_token_iterator,
)
from nclm.data.tokens import FORMAT, encode_record, shard_name
from nclm.text.frontend import TextFrontend
from nclm.text.symbols import BOS_ID, EOS_ID, SymbolTable

Q = 2
TEXT_BUCKETS, FRAME_BUCKETS = (16, 32, 64), (32, 64, 128, 256)
MAX_TOKENS = 1200
NUM, TOO_LONG = 60, (7, 23)  # examples; these two exceed the largest buckets


def _lengths(num: int = NUM) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    text_len = rng.integers(1, 60, num)
    frames = rng.integers(1, 250, num)
    text_len[TOO_LONG[0]], frames[TOO_LONG[1]] = 70, 300
    return text_len, frames


def _semantic(i: int, frames: int) -> np.ndarray:
    return (i + np.arange(frames)) % 7


def _write_tokens(out, num=NUM, shard_size=16, semantic=False):
    """Example i: text ids 3 + (i + j) % 20, codes all i + 1 (so a row names its example), with
    `semantic` semantic ids (i + t) % 7."""
    out.mkdir(parents=True, exist_ok=True)
    text_len, frames = _lengths(num)
    num_shards = -(-num // shard_size)
    shards = []
    for k in range(num_shards):
        ids = range(k * shard_size, min(num, (k + 1) * shard_size))
        writer = ArrayRecordWriter(str(out / shard_name(k, num_shards)), "group_size:1")
        for i in ids:
            text = 3 + (i + np.arange(text_len[i])) % 20
            codes = np.full((Q, frames[i]), i + 1, np.int16)
            sem = _semantic(i, frames[i]) if semantic else None
            writer.write(encode_record(codes, text, f"s{i % 3}", frames[i] / 50, f"u{i}", sem))
        writer.close()
        shards.append(
            {
                "file": shard_name(k, num_shards),
                "num_records": len(ids),
                "text_len": [int(text_len[i]) for i in ids],
                "frames": [int(frames[i]) for i in ids],
            }
        )
    index = {"format": FORMAT, "version": 1, "num_codebooks": Q, "symbols": "symbols.json"}
    if semantic:
        index["semantic"] = {"path": "semantic", "num_clusters": 7, "frame_rate": 50.0}
    (out / "index.json").write_text(json.dumps({**index, "shards": shards}))
    SymbolTable([chr(97 + j) for j in range(20)], TextFrontend("graphemes")).save(
        out / "symbols.json"
    )
    return out


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return _write_tokens(tmp_path_factory.mktemp("tokens"))


def _iterator(path, **kwargs):
    args = dict(max_tokens=MAX_TOKENS, seed=0, row_multiple=2, host_index=0, host_count=1)
    return make_token_iterator(path, TEXT_BUCKETS, FRAME_BUCKETS, **{**args, **kwargs})


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _example_ids(batch) -> list[int]:
    return [int(c) - 1 for c, n in zip(batch["codes"][:, 0, 0], batch["code_len"]) if n]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_static_shapes_and_contents(tokens):
    it = _iterator(tokens)
    text_len, frames = _lengths()
    shapes = set()
    for batch in _take(it, 2 * it.num_batches):
        rows, lt = batch["text"].shape
        assert batch["codes"].shape[:2] == (rows, Q)
        t = batch["codes"].shape[2]
        assert lt in TEXT_BUCKETS and t in FRAME_BUCKETS
        assert rows == batch_rows(lt, t, MAX_TOKENS, 2)
        assert all(v.dtype == np.int32 for v in batch.values())
        assert "semantic" not in batch  # records without semantic ids
        shapes.add((rows, lt, t))
        for row, i in zip(np.flatnonzero(batch["code_len"]), _example_ids(batch)):
            n = text_len[i]
            assert batch["text_len"][row] == n + 2 <= lt  # BOS + ids + EOS
            assert batch["text"][row, 0] == BOS_ID and batch["text"][row, n + 1] == EOS_ID
            np.testing.assert_array_equal(
                batch["text"][row, 1 : n + 1], 3 + (i + np.arange(n)) % 20
            )
            assert not batch["text"][row, n + 2 :].any()
            assert batch["code_len"][row] == frames[i] < t  # room for the EOS frame
            assert (batch["codes"][row, :, : frames[i]] == i + 1).all()
            assert not batch["codes"][row, :, frames[i] :].any()
            # the smallest buckets that fit
            assert TEXT_BUCKETS.index(lt) == np.searchsorted(TEXT_BUCKETS, n + 2)
            assert FRAME_BUCKETS.index(t) == np.searchsorted(FRAME_BUCKETS, frames[i] + 1)
        empty = batch["code_len"] == 0
        assert not batch["text_len"][empty].any() and not batch["text"][empty].any()
        assert not batch["codes"][empty].any()
    assert len(shapes) > 3  # several buckets in use


def test_every_example_once_per_epoch(tokens, caplog):
    it = _iterator(tokens)
    with caplog.at_level(logging.INFO, "nclm.data.token_pipeline"):
        for _ in range(2):
            seen = [i for batch in _take(it, it.num_batches) for i in _example_ids(batch)]
            assert sorted(seen) == [i for i in range(NUM) if i not in TOO_LONG]
    for epoch in (0, 1):  # once per epoch (when its plan is made: grain may read ahead)
        assert caplog.text.count(f"epoch {epoch}: skipped 2 of 60 examples") == 1


def test_token_budget_respected(tokens):
    for max_tokens in (100, MAX_TOKENS, 5000):
        it = _iterator(tokens, max_tokens=max_tokens, row_multiple=4)
        for batch in _take(it, it.num_batches):
            rows, lt = batch["text"].shape
            t = batch["codes"].shape[2]
            assert rows % 4 == 0
            assert rows * (lt + t) <= max_tokens or rows == 4


def test_deterministic_for_a_seed(tokens):
    it = _iterator(tokens)
    first = _take(it, it.num_batches + 3)
    _assert_same(first, _take(_iterator(tokens), it.num_batches + 3))
    other = _take(_iterator(tokens, seed=1), 3)
    assert [_example_ids(b) for b in other] != [_example_ids(b) for b in first[:3]]
    # the next epoch is another order
    epoch_1 = [_example_ids(b) for b in first[it.num_batches :]]
    assert epoch_1 != [_example_ids(b) for b in first[:3]]


def test_state_restore_resumes_the_same_batches(tokens):
    it = _iterator(tokens)
    skip = it.num_batches - 2  # the resumed part crosses into the next epoch
    reference = _take(it, skip + 5)
    it = _iterator(tokens)
    _take(it, skip)
    state = json.loads(json.dumps(it.get_state()))  # JSON-serialisable
    assert state == {"epoch": 0, "position": skip}
    resumed = _iterator(tokens)
    resumed.set_state(state)
    _assert_same(_take(resumed, 5), reference[skip:])
    assert resumed.get_state() == {"epoch": 1, "position": 3}
    with pytest.raises(ValueError, match="position must be <"):
        resumed.set_state({"epoch": 0, "position": 10_000})


def test_host_slices_partition_the_global_batch(tokens):
    whole = _take(_iterator(tokens, row_multiple=4), 8)
    parts = [
        _take(_iterator(tokens, row_multiple=4, host_index=h, host_count=2), 8) for h in (0, 1)
    ]
    for batch, a, b in zip(whole, *parts):
        for key in batch:
            np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), batch[key])
    with pytest.raises(ValueError, match="not divisible by 4 hosts"):
        _iterator(tokens, row_multiple=2, host_index=0, host_count=4)


def test_eval_batches_fixed_and_complete(tokens):
    batches = make_eval_batches(
        tokens, TEXT_BUCKETS, FRAME_BUCKETS, MAX_TOKENS, 2, host_index=0, host_count=1
    )
    again = make_eval_batches(
        tokens, TEXT_BUCKETS, FRAME_BUCKETS, MAX_TOKENS, 2, host_index=0, host_count=1
    )
    _assert_same(batches, again)
    seen = [i for batch in batches for i in _example_ids(batch)]
    assert sorted(seen) == [i for i in range(NUM) if i not in TOO_LONG]
    for batch in batches:  # no shuffle: ids in order within each batch
        assert _example_ids(batch) == sorted(_example_ids(batch))


def test_dataset_and_errors(tokens, tmp_path):
    dataset = TokenDataset(tokens)
    assert len(dataset) == NUM and dataset[5]["utt_id"] == "u5"
    assert len(dataset.symbols) == 23
    with pytest.raises(FileNotFoundError, match="no index.json"):
        TokenDataset(tmp_path)
    with pytest.raises(ValueError, match="text_buckets: expected increasing"):
        make_token_iterator(tokens, (32, 16), FRAME_BUCKETS, MAX_TOKENS, 0)
    with pytest.raises(ValueError, match="no example fits"):
        make_token_iterator(tokens, (2,), FRAME_BUCKETS, MAX_TOKENS, 0)


def test_eval_batches_limit_takes_every_bucket(tokens):
    """max_batches picks batches round-robin over the buckets, not just the shortest ones."""
    every = make_eval_batches(tokens, TEXT_BUCKETS, FRAME_BUCKETS, MAX_TOKENS, row_multiple=2)
    shapes = {(b["text"].shape[1], b["codes"].shape[2]) for b in every}
    some = make_eval_batches(
        tokens, TEXT_BUCKETS, FRAME_BUCKETS, MAX_TOKENS, row_multiple=2, max_batches=len(shapes)
    )
    assert len(some) == len(shapes)
    assert {(b["text"].shape[1], b["codes"].shape[2]) for b in some} == shapes


def test_semantic_ids_ride_along_with_the_codes(tmp_path):
    tokens = _write_tokens(tmp_path / "tokens", num=30, semantic=True)
    it = _iterator(tokens)
    _, frames = _lengths(30)
    for batch in _take(it, it.num_batches):
        rows, t = batch["codes"].shape[0], batch["codes"].shape[2]
        assert batch["semantic"].shape == (rows, t) and batch["semantic"].dtype == np.int32
        for row, i in zip(np.flatnonzero(batch["code_len"]), _example_ids(batch)):
            np.testing.assert_array_equal(
                batch["semantic"][row, : frames[i]], _semantic(i, frames[i])
            )
            assert not batch["semantic"][row, frames[i] :].any()  # 0-padded like the codes
        assert not batch["semantic"][batch["code_len"] == 0].any()
    evals = make_eval_batches(tokens, TEXT_BUCKETS, FRAME_BUCKETS, MAX_TOKENS, 2, 0, 1)
    assert all(b["semantic"].shape == b["codes"][:, 0].shape for b in evals)

    # an index that promises semantic ids over records without them is an error naming the record
    index = json.loads((tokens / "index.json").read_text())
    _write_tokens(tokens, num=30)
    (tokens / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"record \d+ \(u\d+\) does not match index.json"):
        make_eval_batches(tokens, TEXT_BUCKETS, FRAME_BUCKETS, MAX_TOKENS, 2, 0, 1)
