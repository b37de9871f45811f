"""Starts N local processes of one multi-process JAX job, as a cluster launcher would: each
process gets 8 / N fake CPU devices (so N processes span the same 8 devices as the one-process
tests) and the plain launch variables (`JAX_COORDINATOR_ADDRESS`, `JAX_PROCESS_COUNT`,
`JAX_PROCESS_ID`), or whatever a test's `env(index)` sets instead (a faked SLURM step). Each runs
under `timeout -s KILL`, with short connect and shutdown timeouts, so a hung collective fails the
test in seconds instead of blocking the suite.

    procs = start(["-m", "nclm", "train", "--config", cfg, "--workdir", wd], processes=2)
    outputs = finish(procs)     # [(returncode, stdout + stderr)] per process
    outputs = run(["-c", "import nclm; ..."], processes=2)   # all must exit 0
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEVICES = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain_launch(processes: int, port: int) -> Callable[[int], dict]:
    """The variables a plain multi-node launch sets on process `index`."""

    def env(index: int) -> dict:
        return {
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_PROCESS_COUNT": str(processes),
            "JAX_PROCESS_ID": str(index),
        }

    return env


def start(
    argv: list[str],
    processes: int,
    timeout: int = 600,
    env: Callable[[int], dict] | None = None,
) -> list[subprocess.Popen]:
    """`python ARGV` in `processes` processes of one job (one process: no launch variables)."""
    if env is None:
        env = plain_launch(processes, free_port()) if processes > 1 else lambda _: {}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_PROCESS", "SLURM_"))}
    base.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES // processes} "
        "--xla_backend_optimization_level=0",  # as tests/conftest.py: compiles faster
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
        NCLM_INIT_TIMEOUT_S="60",
        NCLM_SHUTDOWN_TIMEOUT_S=os.environ.get("NCLM_SHUTDOWN_TIMEOUT_S", "20"),
    )
    base.pop("JAX_COORDINATOR_ADDRESS", None)
    procs = []
    for i in range(processes):
        log = tempfile.TemporaryFile("w+")  # a pipe could fill up and block the process
        procs.append(
            subprocess.Popen(
                ["timeout", "-s", "KILL", str(timeout), sys.executable, *argv],
                env={**base, **env(i)},
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
        procs[-1].log = log
    return procs


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    results = []
    for p in procs:
        code = p.wait()
        p.log.seek(0)
        results.append((code, p.log.read()))
    return results


def run(argv: list[str], processes: int, **kwargs) -> list[str]:
    """Runs the job to the end and returns each process's output; fails on any non-zero exit."""
    results = finish(start(argv, processes, **kwargs))
    for i, (code, out) in enumerate(results):
        assert code == 0, f"process {i} of {processes} exited {code}:\n{out[-4000:]}"
    return [out for _, out in results]
