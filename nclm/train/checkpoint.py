"""Run checkpoints through orbax: train state + data iterator state, saved asynchronously.

    <workdir>/checkpoints/<step>/state   orbax StandardSave of the whole train state
    <workdir>/checkpoints/<step>/data    JSON: {"hosts": [every process's data iterator state]}

Orbax writes each step into a temporary directory and renames it when complete, so a crash in the
middle of a write leaves the previous step as the latest usable checkpoint (tested). Restoring
takes an abstract state carrying the target shardings, so a run restores onto any mesh.

On several processes each reads its own rows, so each has its own iterator state: `save` gathers
them all (a collective: every process calls it) and `restore` hands each process its own. A run
resumed on another number of processes is fine where the states agree (the pipelines here plan
global batches and give each process a slice of every one) and refused where they do not.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from nclm.paths import as_path, uri


class RunCheckpointer:
    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self.directory = uri(directory)  # a bucket URI stays one
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(
        self, step: int, state: Any, data_state: dict | None = None, force: bool = False
    ) -> bool:
        items = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave({"hosts": gather_json(data_state)})
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(
        self, step: int | None, abstract_state: Any, with_data: bool = True
    ) -> tuple[Any, dict | None]:
        """Restores `step` (the latest by default) into the shardings of `abstract_state` (a tree
        of jax.ShapeDtypeStruct with .sharding). Returns (state, data iterator state or None)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        has_data = with_data and as_path(self.directory).joinpath(str(step), "data").is_dir()
        if has_data:
            items["data"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        if not has_data:
            return restored["state"], None
        where = os.path.join(self.directory, str(step), "data")
        return restored["state"], this_host_state(restored["data"], where)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` carrying `shardings`, the restore target for orbax."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def gather_json(obj: Any) -> list:
    """Every process's JSON-serialisable `obj`, in process order (all processes must call it)."""
    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([data.size], np.int32)).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    rows = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, sizes)]


def this_host_state(saved: Any, where: str) -> Any:
    """This process's iterator state from what `save` wrote (or a state saved by one process
    before the states were gathered)."""
    if not (isinstance(saved, dict) and list(saved) == ["hosts"]):
        return saved
    hosts = saved["hosts"]
    if len(hosts) == jax.process_count():
        return hosts[jax.process_index()]
    if all(h == hosts[0] for h in hosts):
        return hosts[0]
    raise ValueError(
        f"{where}: saved by {len(hosts)} processes whose data positions differ (each read its "
        f"own part of the corpus); resume with {len(hosts)} processes, not {jax.process_count()}"
    )
