"""The grain audio pipeline: shapes and masks, determinism, per-host rows of global batches,
resuming from a saved iterator state, short clips padded or skipped, and bad files named."""

import json
import logging

import numpy as np
import orbax.checkpoint as ocp
import pytest
import soundfile as sf

from nclm.audio.io import AudioError
from nclm.data.audio_pipeline import audio_dataset, make_iterator, validate_manifest
from nclm.data.manifest import ManifestError, write_manifest

SR = 16000
SEGMENT = 4000
LONG = [6000, 9000, 4000, 12000, 5000, 7000, 8000, 10000]  # samples; clip i holds the value
SHORT = [1500, 2500]  # shorter than SEGMENT


def _level(i: int) -> float:
    return (i + 1) / 32


def _manifest(tmp_path, lengths, name="train.jsonl"):
    """Clip i is a constant (i + 1) / 32 for `lengths[i]` samples, so a crop names its clip."""
    records = []
    for i, num in enumerate(lengths):
        rel = f"wavs/s{i % 3}/u{i}.wav"
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / rel, np.full(num, _level(i), np.float32), SR, subtype="FLOAT")
        records.append(
            {"utt_id": f"u{i}", "audio": rel, "duration": num / SR, "speaker": f"s{i % 3}"}
        )
    write_manifest(tmp_path / name, records)
    return tmp_path / name


def _ids(batch) -> list[int]:
    """Which clip each row came from (gain off), read off its first sample."""
    return [round(float(v) * 32) - 1 for v in batch["wav"][:, 0]]


def _iterator(path, **kwargs):
    args = dict(sample_rate=SR, segment_samples=SEGMENT, batch_size=2, seed=0, gain_db_range=None)
    return make_iterator(path, **{**args, **kwargs})


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b, strict=True):
        np.testing.assert_array_equal(a["wav"], b["wav"])
        np.testing.assert_array_equal(a["mask"], b["mask"])


def test_shapes_masks_and_padding(tmp_path):
    path = _manifest(tmp_path, LONG + SHORT)
    batches = list(_iterator(path, batch_size=5, num_epochs=1))
    assert len(batches) == 2
    seen = []
    for batch in batches:
        assert batch["wav"].shape == batch["mask"].shape == (5, SEGMENT)
        assert batch["wav"].dtype == batch["mask"].dtype == np.float32
        for row, i in enumerate(_ids(batch)):
            seen.append(i)
            real = min(SEGMENT, (LONG + SHORT)[i])
            np.testing.assert_array_equal(batch["mask"][row, :real], 1.0)
            np.testing.assert_array_equal(batch["mask"][row, real:], 0.0)
            np.testing.assert_allclose(batch["wav"][row, :real], _level(i), rtol=1e-6)
            np.testing.assert_array_equal(batch["wav"][row, real:], 0.0)
    assert sorted(seen) == list(range(10))  # one epoch: every clip once


def test_short_clips_skipped_and_counted(tmp_path, caplog):
    path = _manifest(tmp_path, LONG + SHORT)
    with caplog.at_level(logging.INFO, logger="nclm.data.audio_pipeline"):
        batches = list(_iterator(path, short="skip", num_epochs=2))
    ids = [i for b in batches for i in _ids(b)]
    assert sorted(ids) == sorted(2 * list(range(len(LONG))))  # short clips 8, 9 never appear
    assert all(b["mask"].min() == 1.0 for b in batches)
    assert caplog.text.count("2 of 10 clips shorter than 4000 samples were skipped") == 2
    with pytest.raises(ManifestError, match="no clip is at least 4000 samples"):
        _iterator(_manifest(tmp_path, SHORT, "short.jsonl"), short="skip")


def test_gain_normalisation(tmp_path):
    rng = np.random.default_rng(0)
    rel = "noise.wav"
    sf.write(tmp_path / rel, rng.normal(0, 0.01, 3 * SR).astype(np.float32), SR, subtype="FLOAT")
    path = tmp_path / "noise.jsonl"
    record = {"utt_id": "n", "audio": rel, "duration": 3.0, "speaker": "s"}
    write_manifest(path, [record])
    batch = next(make_iterator(path, SR, SEGMENT, batch_size=16, seed=1, gain_db_range=(-30, -18)))
    rms_db = 10 * np.log10(np.mean(batch["wav"] ** 2, axis=1))
    assert rms_db.min() >= -30.01 and rms_db.max() <= -17.99
    assert rms_db.max() - rms_db.min() > 3  # a random level per crop, not one fixed level
    assert np.abs(batch["wav"]).max() <= 0.99 + 1e-6


def test_deterministic_for_a_seed(tmp_path):
    path = _manifest(tmp_path, LONG + SHORT)
    kwargs = dict(batch_size=3, gain_db_range=(-30.0, -18.0))
    _assert_same(_take(_iterator(path, **kwargs), 8), _take(_iterator(path, **kwargs), 8))
    other = _take(_iterator(path, seed=1, **kwargs), 8)
    assert any(
        not np.array_equal(a["wav"], b["wav"])
        for a, b in zip(_take(_iterator(path, **kwargs), 8), other, strict=True)
    )
    # Reader threads change nothing: every random choice is keyed by position.
    _assert_same(
        _take(_iterator(path, read_threads=0, **kwargs), 8),
        _take(_iterator(path, read_threads=4, **kwargs), 8),
    )


def test_hosts_read_their_rows_of_the_one_host_batches(tmp_path, caplog):
    """Three hosts with 2 rows each, stacked, are exactly one host's batches of 6 (same clips,
    crops and gains): N processes train on what one process would, and each still logs the
    short clips of an epoch once it has read all its rows of it."""
    path = _manifest(tmp_path, LONG + SHORT)
    kwargs = dict(num_epochs=2, gain_db_range=(-30.0, -18.0))
    one = list(_iterator(path, batch_size=6, **kwargs))
    with caplog.at_level(logging.INFO, logger="nclm.data.audio_pipeline"):
        hosts = [
            list(_iterator(path, batch_size=2, shard_index=k, shard_count=3, **kwargs))
            for k in range(3)
        ]
    assert len(one) == 3 and all(len(h) == 3 for h in hosts)  # 20 positions: 3 full batches
    for i, batch in enumerate(one):
        for key in ("wav", "mask"):
            np.testing.assert_array_equal(
                np.concatenate([h[i][key] for h in hosts]), batch[key], err_msg=key
            )
    assert caplog.text.count("clips shorter than 4000 samples were zero-padded") > 0


def test_resume_from_saved_state_matches_uninterrupted_run(tmp_path):
    path = _manifest(tmp_path, LONG + SHORT)
    kwargs = dict(batch_size=3, gain_db_range=(-30.0, -18.0))
    uninterrupted = _take(_iterator(path, **kwargs), 9)  # crosses several epochs

    first = _iterator(path, **kwargs)
    _take(first, 4)
    saved = json.dumps(first.get_state())  # what the train checkpoint stores (orbax JsonSave)
    resumed = _iterator(path, **kwargs)
    resumed.set_state(json.loads(saved))
    _assert_same(_take(resumed, 5), uninterrupted[4:])


def test_resume_through_orbax_json_item(tmp_path):
    path = _manifest(tmp_path, LONG + SHORT)
    uninterrupted = _take(_iterator(path, short="skip"), 7)
    first = _iterator(path, short="skip")
    _take(first, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as manager:
        manager.save(3, args=ocp.args.Composite(data=ocp.args.JsonSave(first.get_state())))
        manager.wait_until_finished()
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as manager:
        state = manager.restore(3, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]
    resumed = _iterator(path, short="skip")
    resumed.set_state(state)
    _assert_same(_take(resumed, 4), uninterrupted[3:])


def test_missing_and_corrupt_files_are_named(tmp_path):
    path = _manifest(tmp_path, LONG)
    (tmp_path / "wavs/s2/u5.wav").unlink()
    with pytest.raises(ManifestError, match=r"train\.jsonl:6: .*u5\.wav: no such audio file"):
        validate_manifest(path)
    with pytest.raises(AudioError, match=r"u5\.wav: no such audio file"):
        list(_iterator(path, num_epochs=1))
    (tmp_path / "wavs/s2/u5.wav").write_bytes(b"garbage" * 100)
    with pytest.raises(AudioError, match=r"train\.jsonl:6: .*u5\.wav: not a readable audio"):
        list(_iterator(path, num_epochs=1))
    with pytest.raises(ManifestError, match=r"train\.jsonl:6: .*u5\.wav: not a readable audio"):
        validate_manifest(path)
    assert len(validate_manifest(_manifest(tmp_path, LONG, "good.jsonl"))) == len(LONG)


def test_bad_arguments_fail_with_one_line(tmp_path):
    path = _manifest(tmp_path, LONG)
    with pytest.raises(ValueError, match="short: expected 'pad' or 'skip'"):
        _iterator(path, short="drop")
    with pytest.raises(ValueError, match="shard_index"):
        _iterator(path, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match=r"batch_size=3 x 3 host\(s\): larger than the 8 clips"):
        _iterator(path, batch_size=3, shard_index=1, shard_count=3, num_epochs=1)
    with pytest.raises(ValueError, match=r"batch_size=9 x 1 host\(s\): larger than the 8 clips"):
        _iterator(path, batch_size=9, num_epochs=1)
    with pytest.raises(ValueError, match="gain_db_range"):
        _iterator(path, gain_db_range=(-10.0, 3.0))
    with pytest.raises(ManifestError, match="no such manifest file"):
        audio_dataset(tmp_path / "none.jsonl", SR, SEGMENT, 2, 0)
