"""Starting multi-process JAX from whatever launched this process.

    initialize_distributed()   # first thing on every process; nothing happens on a single host

How the launcher is recognised, in order (`detect_launch` reads only the environment):
- plain: `JAX_COORDINATOR_ADDRESS=host:port` with `JAX_PROCESS_COUNT` / `JAX_PROCESS_ID`, or with
  `NNODES` / `NODE_RANK` (one process per node, torchrun's names); `JAX_LOCAL_DEVICE_IDS` limits a
  process to some of the host's accelerators;
- SLURM, inside `srun`: `SLURM_NTASKS` > 1. One task per GPU by default (jax gives each task the
  device numbered `SLURM_LOCALID`); with one task per node (`--ntasks-per-node=1`) the task takes
  all `SLURM_GPUS_ON_NODE` GPUs;
- Open MPI (`mpirun`): `OMPI_COMM_WORLD_SIZE` > 1;
- TPU: GKE (`TPU_WORKER_HOSTNAMES` naming several hosts) and TPU VMs (jax reads the VM's
  metadata server), so a pod launched with `gcloud ... ssh --worker=all` needs nothing set.

`NCLM_INIT_TIMEOUT_S` (default 300) bounds the wait for every process to connect and
`NCLM_SHUTDOWN_TIMEOUT_S` (default 300) the wait at exit for the others: tests use a few seconds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import jax
from jax.experimental import multihost_utils

from nclm.config import ConfigError

log = logging.getLogger("nclm")


@dataclass(frozen=True)
class Launch:
    """What the launcher says about this process. None fields are left to jax's own detection."""

    kind: str  # plain | slurm | ompi | tpu
    coordinator: str | None = None
    process_count: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None


def _int_env(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={env[name]!r}: expected an integer"
        ) from None


def _plain(env: Mapping[str, str]) -> Launch | None:
    address = env["JAX_COORDINATOR_ADDRESS"]
    for count, index in (("JAX_PROCESS_COUNT", "JAX_PROCESS_ID"), ("NNODES", "NODE_RANK")):
        if count in env and index in env:
            n, i = _int_env(env, count), _int_env(env, index)
            if not 0 <= i < n:
                raise ConfigError(f"{index}={i} is outside 0..{n - 1} ({count}={n})")
            return Launch("plain", address, n, i) if n > 1 else None
    if "SLURM_NTASKS" in env or "OMPI_COMM_WORLD_SIZE" in env:
        return _scheduler(env)  # its variables give the count and id; jax reads the address
    raise ConfigError(
        f"JAX_COORDINATOR_ADDRESS={address} is set but not how many processes there are: set "
        "JAX_PROCESS_COUNT and JAX_PROCESS_ID (or NNODES and NODE_RANK) on every process"
    )


def _slurm(env: Mapping[str, str]) -> Launch | None:
    needed = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
    if _int_env(env, "SLURM_NTASKS") <= 1:
        return None
    missing = [v for v in needed if v not in env]
    if missing:
        raise ConfigError(
            f"SLURM_NTASKS={env['SLURM_NTASKS']} but {missing} are not set: start the tasks "
            "with srun inside the allocation"
        )
    devices = None
    if env.get("SLURM_NTASKS_PER_NODE") == "1" and "SLURM_GPUS_ON_NODE" in env:
        devices = tuple(range(_int_env(env, "SLURM_GPUS_ON_NODE")))  # one task drives all GPUs
    return Launch("slurm", local_device_ids=devices)


def _on_tpu_vm() -> bool:
    try:
        from jax._src.cloud_tpu_init import running_in_cloud_tpu_vm
    except ImportError:  # a jax without it: judge by the TPU device files
        return os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")
    return bool(running_in_cloud_tpu_vm)


def _scheduler(env: Mapping[str, str]) -> Launch | None:
    if "SLURM_NTASKS" in env:
        return _slurm(env)
    return Launch("ompi") if _int_env(env, "OMPI_COMM_WORLD_SIZE") > 1 else None


def detect_launch(env: Mapping[str, str] | None = None) -> Launch | None:
    """How this process was launched, or None for a single process."""
    env = os.environ if env is None else env
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return _plain(env)
    if "SLURM_NTASKS" in env or "OMPI_COMM_WORLD_SIZE" in env:
        return _scheduler(env)
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return Launch("tpu")
    if env is os.environ and _on_tpu_vm():
        return Launch("tpu")
    return None


def initialize_distributed() -> Launch | None:
    """Connects this process to the others (once; later calls return at once). Must run before
    anything asks jax for its devices."""
    if jax.distributed.is_initialized():
        return None
    launch = detect_launch()
    if launch is None:
        return None
    env = os.environ
    kwargs = dict(
        initialization_timeout=_int_env(env, "NCLM_INIT_TIMEOUT_S")
        if "NCLM_INIT_TIMEOUT_S" in env
        else 300,
        shutdown_timeout_seconds=_int_env(env, "NCLM_SHUTDOWN_TIMEOUT_S")
        if "NCLM_SHUTDOWN_TIMEOUT_S" in env
        else 300,
    )
    if launch.local_device_ids is not None:
        kwargs["local_device_ids"] = list(launch.local_device_ids)
    jax.distributed.initialize(
        launch.coordinator,
        launch.process_count,
        launch.process_id,
        # plain: everything is given, so jax must not add a scheduler's device choice
        cluster_detection_method={"plain": "deactivate", "tpu": None}.get(launch.kind, launch.kind),
        **kwargs,
    )
    log.info(
        "jax.distributed (%s): process %d of %d, %d local devices of %d",
        launch.kind,
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return launch


def wait_for_all(name: str) -> None:
    """Every process waits here until all have arrived (after process 0 writes a file the others
    will read, or before exiting: jax's exit barrier gives up after NCLM_SHUTDOWN_TIMEOUT_S)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
