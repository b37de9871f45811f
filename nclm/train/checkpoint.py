"""Run checkpoints through orbax: train state + data iterator state, saved asynchronously.

    <workdir>/checkpoints/<step>/state   orbax StandardSave of the whole train state
    <workdir>/checkpoints/<step>/data    JSON of the grain iterator's get_state()

Orbax writes each step into a temporary directory and renames it when complete, so a crash in the
middle of a write leaves the previous step as the latest usable checkpoint (tested). Restoring
takes an abstract state carrying the target shardings, so a run restores onto any mesh.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class RunCheckpointer:
    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self.directory = os.path.abspath(directory)
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
            items["data"] = ocp.args.JsonSave(data_state)
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
        has_data = with_data and (os.path.isdir(os.path.join(self.directory, str(step), "data")))
        if has_data:
            items["data"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], (restored["data"] if has_data else None)

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
