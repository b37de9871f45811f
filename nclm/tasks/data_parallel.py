"""Data-parallel decoding over this host's devices: parameters replicated, batch rows sharded.

    placement = DataParallel(params, num_devices=None)    # all of jax.local_devices()
    d = placement.devices_for(num_rows)                     # a power of two dividing num_rows
    params = placement.params(d)                            # replicated on the first d devices
    text, prompt = placement.shard(d, text, prompt)         # rows split over them

The parameters are copied once, replicated over all `num_devices`; `params(d)` is a view of the
copies on the first d devices (the same buffers, no second copy), so a batch can use fewer
devices than the host has: a single request stays on one device, with no collectives. The jitted
decoders take the input shardings as they come (GSPMD propagates the batch split through the KV
cache and the frames); each device runs rows / d rows of the same program.

Sampling draws per-element threefry bits (`jax_threefry_partitionable`, jax's default), so the
sharded tokens equal the unsharded ones (tests/tasks/test_tts.py checks it).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from nclm.sharding import batch_sharding, make_mesh, put_replicated, replicated


def check_devices(num_devices: int | None) -> int:
    """`num_devices` (None: every local device), checked against this host's devices."""
    available = len(jax.local_devices())
    if num_devices is None:
        return available
    if isinstance(num_devices, bool) or not isinstance(num_devices, int):
        raise ValueError(f"--devices must be an integer, got {num_devices!r}")
    if not 1 <= num_devices <= available:
        raise ValueError(
            f"--devices {num_devices}: expected 1 to {available} (this host's local devices)"
        )
    return num_devices


def devices_for(num_rows: int, num_devices: int) -> int:
    """The largest power of two <= min(num_rows, num_devices) that divides num_rows."""
    d = 1
    while 2 * d <= min(num_rows, num_devices) and num_rows % (2 * d) == 0:
        d *= 2
    return d


class DataParallel:
    def __init__(self, params: Any, num_devices: int | None = None):
        self.num_devices = check_devices(num_devices)
        self._devices = jax.local_devices()[: self.num_devices]
        self._meshes = {}
        self._params = {self.num_devices: put_replicated(params, self.mesh(self.num_devices))}

    def devices_for(self, num_rows: int) -> int:
        return devices_for(num_rows, self.num_devices)

    def mesh(self, d: int) -> jax.sharding.Mesh:
        if d not in self._meshes:
            self._meshes[d] = make_mesh({"data": d}, self._devices[:d])
        return self._meshes[d]

    def params(self, d: int) -> Any:
        """The parameters replicated over the first d devices: views of the full copy."""
        if d not in self._params:
            sharding, wanted = replicated(self.mesh(d)), set(self._devices[:d])

            def view(x: jax.Array) -> jax.Array:
                shards = [s.data for s in x.addressable_shards if s.device in wanted]
                return jax.make_array_from_single_device_arrays(x.shape, sharding, shards)

            self._params[d] = jax.tree.map(view, self._params[self.num_devices])
        return self._params[d]

    def shard(self, d: int, *arrays: np.ndarray | jax.Array) -> tuple[jax.Array, ...]:
        """Batch-major arrays with their rows split over the first d devices."""
        mesh = self.mesh(d)
        return tuple(jax.device_put(x, batch_sharding(mesh, np.ndim(x))) for x in arrays)
