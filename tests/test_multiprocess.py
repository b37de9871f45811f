"""Several processes of one job, started the way launchers start them (tests/multiprocess.py):
how each launcher is recognised, a faked SLURM step initialises, and training on 2 processes x 4
CPU devices equals training in this one process on 8: the codec (k-means codebook init, GAN step,
evaluation, export) and the LM across a resume in either direction and a SIGTERM that reaches one
process only. Each launch costs seconds of work but tens of seconds of compiling on a 2-core
machine, hence one launch per trainer."""

import dataclasses
import json
import signal
import time
from functools import partial

import jax
import numpy as np
import pytest

from nclm.codec.interface import NeuralCodec
from nclm.config import ConfigError, save_config
from nclm.distributed import Launch, detect_launch
from nclm.lm.checkpoint import load_lm
from nclm.train.checkpoint import RunCheckpointer
from nclm.train.codec_train import train_codec
from nclm.train.lm_train import train_lm
from nclm.train.metrics import read_metrics
from tests.multiprocess import finish, free_port, run, start
from tests.train.test_codec_train import _corpus, _tiny_cfg
from tests.train.test_lm_train import LM, _cfg, _token_dir


def test_each_launcher_is_recognised():
    plain = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}
    assert detect_launch({}) is None
    assert detect_launch({**plain, "JAX_PROCESS_COUNT": "4", "JAX_PROCESS_ID": "3"}) == Launch(
        "plain", "10.0.0.1:1234", 4, 3
    )
    assert detect_launch({**plain, "NNODES": "2", "NODE_RANK": "1"}) == Launch(
        "plain", "10.0.0.1:1234", 2, 1
    )
    assert detect_launch({**plain, "NNODES": "1", "NODE_RANK": "0"}) is None
    with pytest.raises(ConfigError, match="set JAX_PROCESS_COUNT and JAX_PROCESS_ID"):
        detect_launch(plain)
    with pytest.raises(ConfigError, match="NODE_RANK=2 is outside 0..1"):
        detect_launch({**plain, "NNODES": "2", "NODE_RANK": "2"})
    slurm = {
        "SLURM_JOB_ID": "7",
        "SLURM_STEP_NODELIST": "gpu[01-02]",
        "SLURM_NTASKS": "16",
        "SLURM_PROCID": "9",
        "SLURM_LOCALID": "1",
    }
    assert detect_launch(slurm) == Launch("slurm")  # one task per GPU: jax picks SLURM_LOCALID
    per_node = {**slurm, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1"}
    assert detect_launch({**per_node, "SLURM_GPUS_ON_NODE": "8"}).local_device_ids == tuple(
        range(8)
    )
    assert detect_launch({**slurm, "SLURM_NTASKS": "1"}) is None  # a one-task allocation
    with pytest.raises(ConfigError, match="start the tasks with srun"):
        detect_launch({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"})
    assert detect_launch({"OMPI_COMM_WORLD_SIZE": "2"}) == Launch("ompi")
    assert detect_launch({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}) == Launch("tpu")
    assert detect_launch({"TPU_WORKER_HOSTNAMES": "t0"}) is None


def test_a_faked_slurm_step_initialises():
    """The variables srun sets on two tasks of one node; jax derives the coordinator from the
    node list and the port from JAX_COORDINATOR_PORT."""
    port = free_port()

    def slurm(index):
        return {
            "SLURM_JOB_ID": "4242",
            "SLURM_STEP_NODELIST": "localhost",
            "SLURM_NTASKS": "2",
            "SLURM_PROCID": str(index),
            "SLURM_LOCALID": str(index),
            "JAX_COORDINATOR_PORT": str(port),
        }

    code = (
        "from nclm.distributed import initialize_distributed as init; import jax; "
        "launch = init(); print('got', launch.kind, jax.process_index(), jax.process_count())"
    )
    outs = run(["-c", code], 2, timeout=60, env=slurm)
    assert [o.split("got ")[1].split()[:3] for o in outs] == [
        ["slurm", "0", "2"],
        ["slurm", "1", "2"],
    ]


def _without_perf(rows):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def _assert_same_metrics(a, b, rtol=1e-5, atol=1e-6):
    """Same steps and keys; values within the sharded-step tolerance (another device layout
    sums in another order)."""
    a, b = _without_perf(a), _without_perf(b)
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_allclose(y[k], x[k], rtol=rtol, atol=atol, err_msg=f"{x['step']} {k}")


@pytest.mark.heavy
def test_lm_on_two_processes_resumes_stops_together_and_equals_one(tmp_path):
    """Steps 1-2 in this process (8 devices), saved; 2 processes x 4 devices resume from that
    checkpoint; SIGTERM to process 1 alone stops both at the same step, saved, exit 0; this
    process resumes that checkpoint to the end. Every logged value (training and validation)
    equals the uninterrupted one-process run's, and so does the export."""
    cfg = _cfg(dataclasses.replace(LM, text_vocab_size=0), steps=40, log_every=1)
    cfg.train.eval_every, cfg.train.checkpoint_every = 10, 20
    cfg.data.train = cfg.data.valid = _token_dir(tmp_path / "tokens")
    cfg.data.text_buckets, cfg.data.frame_buckets, cfg.data.max_tokens = (16,), (32, 96), 512
    cfg.mesh = {"data": 8, "fsdp": 1, "tensor": 1}
    save_config(cfg, tmp_path / "config.json")
    train_lm(cfg, tmp_path / "straight", progress=False)

    workdir = tmp_path / "one_two_one"
    train_lm(cfg, workdir, stop_after=2, progress=False)
    args = ["-m", "nclm", "train", "--config", str(tmp_path / "config.json")]
    procs = start([*args, "--workdir", str(workdir), "--no-progress"], 2)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 200
    while read_metrics(metrics)[-1]["step"] < 3 and time.time() < deadline:
        assert all(p.poll() is None for p in procs), finish(procs)
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)  # `timeout` hands it on to the process
    results = finish(procs)
    assert [code for code, _ in results] == [0, 0], results
    stopped = [out.split("stopped by signal 15 at step ")[1].split(";")[0] for _, out in results]
    step = int(stopped[0])
    assert stopped == [str(step)] * 2 and 3 <= step < cfg.train.steps
    assert RunCheckpointer(workdir / "checkpoints").latest_step() == step
    assert not (workdir / "lm").exists()

    train_lm(cfg, workdir, progress=False)  # this one process again, to the end
    _assert_same_metrics(
        read_metrics(tmp_path / "straight" / "metrics.jsonl"), read_metrics(metrics)
    )
    runs = [json.loads(line) for line in (workdir / "runs.jsonl").read_text().splitlines()]
    assert [r["process_count"] for r in runs] == [1, 2, 1]
    _, params, _, _ = load_lm(workdir / "lm")
    _, reference, _, _ = load_lm(tmp_path / "straight" / "lm")
    close = partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6)
    jax.tree_util.tree_map(close, params, reference)


@pytest.mark.heavy
def test_codec_training_on_two_processes_equals_one(tmp_path):
    """EMA codebooks initialised by k-means on the first global batch, 3 GAN steps, evaluation
    and export: 2 processes (each reading its 4 rows of every batch of 8) equal one process."""
    cfg = _tiny_cfg("seanet", _corpus(tmp_path / "corpus", 6), steps=3, log_every=1)
    cfg.train.eval_every = cfg.train.checkpoint_every = 3
    cfg.data.batch_size = 8
    assert cfg.codec.quantizer.kind == "ema" and cfg.train.kmeans_init
    save_config(cfg, tmp_path / "config.json")
    train_codec(cfg, tmp_path / "one", progress=False)
    args = ["-m", "nclm", "train", "--config", str(tmp_path / "config.json")]
    run([*args, "--workdir", str(tmp_path / "two"), "--no-progress"], 2, timeout=1200)
    one, two = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("one", "two"))
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 3]
    for a, b in zip(_without_perf(one), _without_perf(two)):  # the GAN step's tolerance
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=2e-4, atol=1e-5, err_msg=f"{a['step']} {k}")
    a, b = (NeuralCodec.load(tmp_path / d / "codec").variables for d in ("one", "two"))

    def same(x, y):  # as the sharded-step test: a near-zero gradient may flip one Adam update
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert np.linalg.norm(x - y) <= 1e-3 * np.linalg.norm(y) + 1e-7, x.shape

    jax.tree_util.tree_map(same, a, b)
