"""launch/gpu_check.sh --dry-run: the GPU check's commands at tiny sizes on the CPU, writing the
figures-against-goals table to $OUT."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.heavy
def test_gpu_check_dry_run_writes_the_table(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path))
    env.pop("XLA_FLAGS", None)  # one CPU device, as the script runs outside the test suite
    run = subprocess.run(
        ["bash", str(ROOT / "launch" / "gpu_check.sh"), "--dry-run"],
        env=env, cwd=ROOT, timeout=600, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.startswith("## dry run")
    for figure in (
        "codec encode batch 1",
        "codec decode batch 1",
        "LM training MFU",
        "AR decoding batch 1, context 16",
        "masked generation",
    ):
        assert figure in table, figure  # fmt: skip
    decode = json.loads((tmp_path / "lm_decode.json").read_text())
    assert [r["batch"] for r in decode["results"]] == [1]
    assert f"{decode['results'][0]['ar_steps_per_s']:,.0f} steps/s" in table
