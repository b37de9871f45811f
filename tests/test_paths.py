"""A run directory in a bucket (`gs://`), on a local fake of the bucket's filesystem: the URI
is never turned into a local path, and the run's config, provenance, metrics and export land in
the bucket whole. (Orbax writes checkpoints through google-cloud-storage and tensorstore's GCS
driver, which no local fake reaches: only the URI the run hands it is checked here.)"""

import dataclasses
import os

import fsspec
import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import _registry

from nclm.lm.checkpoint import load_lm, save_lm
from nclm.lm.experiment import lm_experiment
from nclm.paths import as_path, uri
from nclm.text.frontend import TextFrontend
from nclm.text.symbols import SymbolTable
from nclm.train.loop import open_run
from nclm.train.metrics import MetricWriter, read_metrics
from nclm.train.run_dir import truncate_metrics
from tests.train.test_lm_train import LM


class FakeBucket(LocalFileSystem):
    """gs://BUCKET/KEY is the local file ROOT/BUCKET/KEY."""

    protocol = "gs"
    root = ""

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path)
        if path.startswith("gs://"):
            return os.path.join(cls.root, path[len("gs://") :])
        return super()._strip_protocol(path)


@pytest.fixture
def bucket(tmp_path):
    FakeBucket.root = str(tmp_path / "bucket")
    for name in ("gs", "gcs"):  # epath asks fsspec for "gcs"
        fsspec.register_implementation(name, FakeBucket, clobber=True)
    FakeBucket.clear_instance_cache()
    yield tmp_path / "bucket"
    for name in ("gs", "gcs"):
        _registry.pop(name, None)


def test_a_bucket_run_directory_stays_a_uri_and_holds_the_run(bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workdir = as_path("gs://runs/valle")
    assert str(workdir / "config.json") == "gs://runs/valle/config.json"
    assert uri(workdir / "checkpoints") == "gs://runs/valle/checkpoints"
    assert uri("relative/run") == str(tmp_path / "relative" / "run")

    lm = dataclasses.replace(LM, text_vocab_size=0)
    cfg = lm_experiment(lm, tiny=True)
    open_run(cfg, workdir)
    local = bucket / "runs" / "valle"
    assert (local / "config.json").is_file() and (local / "runs.jsonl").is_file()
    open_run(cfg, workdir)  # a resume: same config accepted, provenance appended
    assert len((local / "runs.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "gs:").exists()

    writer = MetricWriter(workdir, tensorboard=False)
    for step in (1, 2):
        writer.scalars(step, {"loss": np.float32(step / 4)})
    assert [r["loss"] for r in read_metrics(workdir / "metrics.jsonl")] == [0.25, 0.5]
    truncate_metrics(writer.path, 1)
    assert [r["step"] for r in read_metrics(local / "metrics.jsonl")] == [1]

    symbols = SymbolTable([chr(97 + j) for j in range(21)], TextFrontend("graphemes"))
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    codec = {"codec_id": "c", "sample_rate": 16000, "frame_rate": 50.0}
    save_lm(workdir / "lm", lm, params, symbols, codec)
    _, loaded, _, meta = load_lm(local / "lm")  # complete: readable where it landed
    np.testing.assert_array_equal(loaded["w"], params["w"])
    assert meta["codec"]["codec_id"] == "c"
