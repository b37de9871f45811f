"""The run directory every training loop shares: one config per workdir, run provenance
(runs.jsonl: command, git revision, versions, devices), and a metrics log cut back to the
restored step on resume."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import ml_collections

from nclm.config import ConfigError, to_dict
from nclm.paths import append_line, write_text
from nclm.train.metrics import read_metrics


def check_workdir(cfg: ml_collections.ConfigDict, workdir: Path) -> None:
    """A workdir holds one run: resuming with a different config is refused."""
    saved = workdir / "config.json"
    if saved.is_file():
        before = json.loads(saved.read_text())
        now = json.loads(json.dumps(to_dict(cfg), sort_keys=True))
        if before != now:
            diff = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise ConfigError(
                f"{workdir} holds a run with another config (differs in {diff}); "
                f"resume with --config {saved} or use a new --workdir"
            )


def write_run_info(workdir: Path) -> None:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    import flax
    import optax

    info = {
        "command": sys.argv,
        "git_revision": rev,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    append_line(workdir / "runs.jsonl", json.dumps(info))


def truncate_metrics(path: Path, step: int) -> None:
    """Drops log lines past the restored step (written before a crash), so the log stays one
    consistent history."""
    rows = read_metrics(path)
    if rows and rows[-1]["step"] > step and jax.process_index() == 0:
        write_text(path, "".join(json.dumps(r) + "\n" for r in rows if r["step"] <= step))


def host_params(tree):
    """A sharded pytree as host numpy arrays. On several processes the shards of a parameter
    live on different hosts, so every process must call this (an all-gather) before process 0
    writes the export."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
