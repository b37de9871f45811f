"""launch/: the TPU-pod, SLURM and plain multi-node scripts run their real code paths against
stand-ins for gcloud, ssh and the trainer (recording what they are asked to do): the tree and the
config reach every TPU worker, every worker trains, each worker's log comes back; each node gets
the coordinator, the node count and its own rank; SLURM's one-task-per-node variant hands the
process all of the node's GPUs. Plus `bash -n` and shellcheck (when installed) on each script."""

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("tpu_pod.sh", "slurm.sbatch", "multinode.sh")

FAKE_GCLOUD = r"""#!/usr/bin/env bash
# gcloud compute tpus tpu-vm scp|ssh|describe ..., recorded under $FAKE
echo "$*" >> "$FAKE/calls"
verb=$4
case "$verb" in
  scp)
    if [[ "$5" == *:* ]]; then echo "log of $7" > "$6"; else cp "$5" "$FAKE/archive.tar.gz"; fi ;;
  ssh)
    while [[ "$1" != --command ]]; do shift; done
    printf '%s' "$2" > "$FAKE/remote_command" ;;
  describe) echo "10.0.0.1;10.0.0.2" ;;
esac
"""

FAKE_SSH = r"""#!/usr/bin/env bash
# ssh -o BatchMode=yes HOST COMMAND: runs COMMAND here
shift 2; host=$1; shift
echo "host=$host"
bash -c "$1"
"""

FAKE_TRAINER = r"""#!/usr/bin/env bash
# stands in for .venv/bin/python: what the node would train with
echo "coordinator=$JAX_COORDINATOR_ADDRESS nnodes=$NNODES rank=$NODE_RANK args=$*"
"""


def _fakes(tmp_path: Path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("gcloud", FAKE_GCLOUD), ("ssh", FAKE_SSH), ("trainer", FAKE_TRAINER)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE=str(tmp_path))


def _run(args, env, check=True):
    out = subprocess.run(
        ["bash", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
    _run(["-n", f"launch/{script}"], os.environ)
    if shutil.which("shellcheck"):
        _run(["-c", f"shellcheck launch/{script}"], os.environ)


def test_tpu_pod_ships_the_tree_trains_on_all_workers_and_collects_logs(tmp_path):
    env = _fakes(tmp_path)
    env["LOGS"] = str(tmp_path / "logs")
    config = tmp_path / "my_experiment.py"  # outside the tree: shipped as configs/_launch.py
    config.write_text("def get_config(arg=None): ...\n")
    _run(["launch/tpu_pod.sh", "pod", "us-west4-a", f"{config}:smoke", "gs://b/runs/x",
          "--config.data.train=gs://b/tokens train"], env)  # fmt: skip
    with tarfile.open(tmp_path / "archive.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"./nclm/sharding.py", "./launch/tpu_pod.sh", "./configs/_launch.py"} <= names
    assert not any(".venv" in n or "__pycache__" in n for n in names)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0].startswith("compute tpus tpu-vm scp") and "--worker=all" in calls[0]
    assert calls[1].startswith("compute tpus tpu-vm ssh pod --worker=all --zone us-west4-a")
    remote = (tmp_path / "remote_command").read_text()
    assert "tar xzf ~/nclm.tar.gz -C nclm" in remote
    assert (
        "nclm.cli train --config configs/_launch.py:smoke --workdir gs://b/runs/x "
        r"--config.data.train=gs://b/tokens\ train" in remote
    )
    for w in (0, 1):  # two workers in the fake slice's description
        assert (
            tmp_path / "logs" / "pod" / f"worker-{w}.log"
        ).read_text() == f"log of --worker={w}\n"
    assert not (tmp_path / "logs" / "pod" / "worker-2.log").exists()


def test_multinode_over_ssh_gives_each_node_its_rank(tmp_path):
    env = _fakes(tmp_path)
    env.update(LOGS=str(tmp_path / "logs"), PYTHON="trainer", PORT="4321")
    _run(["launch/multinode.sh", "--hosts", "gpu0,gpu1", "configs/lm/valle.py", "runs/v",
          "--config.seed=3"], env)  # fmt: skip
    for rank in (0, 1):
        log = (tmp_path / "logs" / f"node-{rank}.log").read_text()
        assert f"host=gpu{rank}" in log
        assert f"coordinator=gpu0:4321 nnodes=2 rank={rank} args=-m nclm.cli train" in log
        assert "--config configs/lm/valle.py --workdir runs/v --config.seed=3" in log
    missing = _run(["launch/multinode.sh", "configs/lm/valle.py", "runs/v"], env, check=False)
    assert missing.returncode == 2 and "JAX_COORDINATOR_ADDRESS" in missing.stderr
    env.update(JAX_COORDINATOR_ADDRESS="gpu0:1", NNODES="2", NODE_RANK="1")
    node = _run(["launch/multinode.sh", "configs/lm/valle.py", "runs/v"], env)  # this node
    assert "coordinator=gpu0:1 nnodes=2 rank=1" in node.stdout


def test_slurm_one_task_per_gpu_and_per_node(tmp_path):
    env = dict(os.environ, SLURM_TASKS_PER_NODE="8(x2)", SLURM_GPUS_ON_NODE="8")
    env.pop("JAX_LOCAL_DEVICE_IDS", None)
    args = ["launch/slurm.sbatch", "--dry-run", "configs/lm/valle.py", "runs/v", "--config.seed=1"]
    per_gpu = _run(args, env).stdout
    assert "JAX_LOCAL_DEVICE_IDS= srun --kill-on-bad-exit=1" in per_gpu
    assert (
        "-m nclm.cli train --config configs/lm/valle.py --workdir runs/v --config.seed=1" in per_gpu
    )
    env["SLURM_TASKS_PER_NODE"] = "1(x2)"
    assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7 srun" in _run(args, env).stdout
