"""What every benchmark records and how it writes it: the machine it ran on and the result file."""

from __future__ import annotations

import json
import os
import platform
import time


def environment() -> dict:
    """Date, devices and versions: the facts BENCHMARKS.md asks of every figure."""
    import jax

    devices = jax.devices()
    return {
        "date": time.strftime("%Y-%m-%d"),
        "devices": f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})",
        "jax": jax.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }


def finish(result: dict, json_path: str | None, print_json: bool = False) -> dict:
    """Prints the result as one JSON line (`print_json`) and writes it to `json_path` if given."""
    if print_json:
        print(json.dumps(result))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    return result
