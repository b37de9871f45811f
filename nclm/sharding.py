"""Sharding as data: mesh construction, logical axis names and the rules table.

Parameters carry logical axis names (`embed`, `mlp`, `heads`, `kv`, `vocab`, `layers`, `levels`,
`conv_in`, `conv_out`); activations use `batch` and friends. One rules table (in the config) maps
each logical name to mesh axes among `data`, `fsdp`, `tensor`. A dimension whose size the mapped
mesh axes do not divide is replicated instead (a 1-channel output conv never blocks fsdp);
`tree_shardings` logs a warning naming the parameter when that costs memory (see `_undivided`).

Activations pass through `constrain(x, ("batch", "length", "embed"))`, which applies the same
rules inside `activation_sharding(mesh, rules)` (the train steps trace under it) and is a no-op
elsewhere (one device, decoding, tests of a single module).

    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    shardings = tree_shardings(logical_specs, abstract_params, mesh, rules)
    params = jax.device_put(params, shardings)

Multi-host: call `nclm.distributed.initialize_distributed()` first on every host; `jax.devices()`
then spans all hosts, and each host feeds its own slice of the batch (see `host_batch_slice`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger("nclm.sharding")
MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axes (a tuple shards one dimension over several axes)
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...] | str | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("layers", None),
    ("levels", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("length", None),
)


def make_mesh(shape: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (all by default) with axes data/fsdp/tensor; one size may be -1."""
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh axes must be among {MESH_AXES}, got {sorted(unknown)}")
    devices = list(devices if devices is not None else jax.devices())
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if len(devices) % known:
            raise ValueError(f"mesh shape {shape} does not divide {len(devices)} devices")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh shape {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
            f"devices, have {len(devices)}"
        )
    return Mesh(np.array(devices).reshape(sizes), MESH_AXES)


def _rules_dict(rules) -> dict:
    return {name: axes for name, axes in rules}


def _split(logical, shape, mesh: Mesh, rules) -> tuple[PartitionSpec, list]:
    """(spec, undivided): undivided lists (dim, name, size, axis, axis size) for every mesh axis
    dropped only because it does not divide the dimension."""
    if logical is None:
        return PartitionSpec(), []
    table, used, spec, undivided = _rules_dict(rules), set(), [], []
    for dim, (name, size) in enumerate(zip(logical, shape)):
        axes = table.get(name) if name is not None else None
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        kept = []
        for axis in axes:
            n = mesh.shape[axis]
            if n == 1 or axis in used:
                continue
            if size % (math.prod(mesh.shape[a] for a in kept) * n) == 0:
                kept.append(axis)
            else:
                undivided.append((dim, name, size, axis, n))
        used.update(kept)
        spec.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
    return PartitionSpec(*spec), undivided


def logical_to_spec(
    logical: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh, rules=DEFAULT_RULES
) -> PartitionSpec:
    """A PartitionSpec for an array of `shape` whose dimensions have logical names `logical`.
    Mesh axes of size 1, axes already used by an earlier dimension, and axes that do not divide
    the dimension are dropped."""
    return _split(logical, shape, mesh, rules)[0]


def _undivided(undivided: list) -> list:
    """The replications worth a warning: a dimension at least as large as the mesh axis that is
    not a multiple of it (a vocabulary of V + 1, 3 output channels on fsdp=2) could be padded to
    shard. One smaller than the axis cannot be split at all and is replicated by design (a
    1-channel output conv on fsdp=8, 2 key/value heads on tensor=4): quiet."""
    return [u for u in undivided if u[2] >= u[4]]


def tree_shardings(logical_specs, abstract_tree, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for `abstract_tree` (arrays or ShapeDtypeStructs) from a matching tree of
    logical PartitionSpecs (as `flax.linen.get_partition_spec` returns). Leaves of the abstract
    tree without a logical spec are replicated. A dimension replicated because the mesh does not
    divide it is logged once per parameter (its optimizer moments repeat it: not logged again)."""
    undivided: dict[tuple, list[str]] = {}

    def one(path, spec, leaf):
        logical = tuple(spec) if isinstance(spec, PartitionSpec) else None
        if logical is not None and len(logical) < len(leaf.shape):
            logical = logical + (None,) * (len(leaf.shape) - len(logical))
        spec, dropped = _split(logical, leaf.shape, mesh, rules)
        for u in _undivided(dropped):
            where = jax.tree_util.keystr(path, simple=True, separator="/")
            undivided.setdefault((tuple(leaf.shape), *u), []).append(where)
        return NamedSharding(mesh, spec)

    shardings = jax.tree_util.tree_map_with_path(
        one,
        logical_specs,
        abstract_tree,
        is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None,
    )
    for (shape, dim, name, size, axis, n), paths in undivided.items():
        log.warning(  # the shortest path: the parameter itself, not an optimizer moment
            "sharding: %s %s dimension %d (%r, size %d) is not divisible by mesh axis %s=%d: "
            "replicated over it (pad it to a multiple of %d to shard)",
            min(paths, key=len),
            shape,
            dim,
            name,
            size,
            axis,
            n,
            n,
        )
    return shardings


# [B, L, C] activations split by batch alone (the codec's conv stacks): without the constraint
# the fsdp split of the conv weights' output channels propagates into the activations and their
# gradients (batch replicated, full rematerialisation between blocks; BENCHMARKS.md, codec rows)
BATCH_ONLY = ("batch", "length", None)

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("nclm_activation_mesh", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules=DEFAULT_RULES):
    """Within this context (while a step is traced) `constrain` applies `rules` on `mesh`."""
    token = _ACTIVE.set((mesh, tuple(rules)) if mesh.size > 1 else None)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def with_activation_sharding(fn: Callable, mesh: Mesh, rules=DEFAULT_RULES) -> Callable:
    """`fn` traced under `activation_sharding(mesh, rules)` (wrap it before `jax.jit`)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with activation_sharding(mesh, rules):
            return fn(*args, **kwargs)

    return wrapped


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """x with a sharding constraint from its dimensions' logical names, under an active
    `activation_sharding`; unchanged otherwise. A spec that shards nothing adds no constraint
    (it would force a replication the compiler may not need)."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    spec = logical_to_spec(tuple(logical), x.shape, mesh, rules)
    if all(s is None for s in spec):
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int, rules=DEFAULT_RULES) -> NamedSharding:
    """Batch-major arrays: the leading dimension over the batch axes, the rest replicated."""
    axes = _rules_dict(rules).get("batch")
    axes = (axes,) if isinstance(axes, str) else tuple(a for a in (axes or ()) if mesh.shape[a] > 1)
    lead = axes if len(axes) > 1 else (axes[0] if axes else None)
    return NamedSharding(mesh, PartitionSpec(lead, *([None] * (ndim - 1))))


def batch_shards(mesh: Mesh, rules=DEFAULT_RULES) -> int:
    """How many ways the batch dimension is split (the product of the batch axes' sizes)."""
    spec = batch_sharding(mesh, 1, rules).spec[0]
    axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
    return math.prod(mesh.shape[a] for a in axes)


def host_batch_slice(global_batch: int) -> tuple[int, int]:
    """The (start, size) of this host's rows of a global batch (each host feeds its own data)."""
    count, index = jax.process_count(), jax.process_index()
    if global_batch % count:
        raise ValueError(f"global batch {global_batch} is not divisible by {count} hosts")
    size = global_batch // count
    return index * size, size


def put_replicated(tree, mesh: Mesh):
    """Host arrays that every process holds alike (a validation batch) as global arrays
    replicated over `mesh`; unlike a plain device_put, this works on several processes."""
    sharding = replicated(mesh)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda i: np.asarray(x)[i]),
        tree,
    )


def global_batch_array(local: np.ndarray, mesh: Mesh, rules=DEFAULT_RULES) -> jax.Array:
    """Assembles each host's local rows into one global array sharded over the batch axes."""
    sharding = batch_sharding(mesh, local.ndim, rules)
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, local)
