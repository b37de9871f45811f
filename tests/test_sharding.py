"""nclm.sharding on the 8 fake CPU devices: mesh construction (-1 fills in), the rules table ->
PartitionSpecs (a dimension the mesh cannot divide is replicated, an axis is used once), trees of
shardings from flax's logical specs, and the batch sharding; each answer written out by hand."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from nclm.sharding import (
    batch_sharding,
    batch_shards,
    global_batch_array,
    logical_to_spec,
    make_mesh,
    tree_shardings,
)


def test_make_mesh_fills_in_minus_one():
    assert jax.device_count() == 8  # tests/conftest.py
    mesh = make_mesh({"data": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}
    assert mesh.devices.ravel().tolist() == jax.devices()  # row-major over data, fsdp, tensor
    assert dict(make_mesh({"fsdp": -1}).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert dict(make_mesh({"data": 2}, jax.devices()[:2]).shape)["data"] == 2
    with pytest.raises(ValueError, match="does not divide 8 devices"):
        make_mesh({"data": -1, "fsdp": 3})
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        make_mesh({"data": -1, "fsdp": -1})
    with pytest.raises(ValueError, match="needs 4 devices, have 8"):
        make_mesh({"data": 2, "fsdp": 2})
    with pytest.raises(ValueError, match=r"must be among .* got \['model'\]"):
        make_mesh({"model": 8})


def test_rules_table_to_partition_specs():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    # DEFAULT_RULES: embed -> fsdp, mlp -> tensor, batch -> (data, fsdp), kv -> replicated
    assert logical_to_spec(("embed", "mlp"), (64, 256), mesh) == P("fsdp", "tensor")
    assert logical_to_spec(("batch", None), (8, 5), mesh) == P(("data", "fsdp"), None)
    assert logical_to_spec(("embed", "heads", "kv"), (64, 4, 16), mesh) == P("fsdp", "tensor", None)
    assert logical_to_spec(None, (3, 3), mesh) == P()
    # 3 output channels: fsdp (2) does not divide 3, so that dimension is replicated
    assert logical_to_spec(("conv_in", "conv_out"), (8, 3), mesh) == P(None, None)
    # batch 2: data (2) divides it, data x fsdp (4) does not: only data is kept
    assert logical_to_spec(("batch",), (2,), mesh) == P("data")
    # a mesh axis is used by one dimension only: the second fsdp dimension is replicated
    assert logical_to_spec(("embed", "embed"), (64, 64), mesh) == P("fsdp", None)
    # a custom table; axes of size 1 are dropped
    rules = (("embed", ("fsdp", "tensor")), ("vocab", "data"))
    assert logical_to_spec(("vocab", "embed"), (6, 8), mesh, rules) == P("data", ("fsdp", "tensor"))
    thin = make_mesh({"data": 8})
    assert logical_to_spec(("embed", "mlp"), (64, 256), thin) == P(None, None)


def test_tree_shardings_from_flax_logical_specs():
    mesh = make_mesh({"data": 2, "fsdp": 4})

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x):
            kernel = nn.with_logical_partitioning(nn.initializers.ones, ("embed", "mlp"))
            bias = nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",))
            out = nn.Dense(6, kernel_init=kernel, bias_init=bias)(x)
            return out + self.param("plain", nn.initializers.zeros, (6,))

    boxed = jax.eval_shape(Tiny().init, jax.random.key(0), jnp.zeros((1, 12)))
    shardings = tree_shardings(nn.get_partition_spec(boxed), nn.meta.unbox(boxed), mesh)
    dense = shardings["params"]["Dense_0"]
    assert dense["kernel"].spec == P("fsdp", None)  # 12 / 4; mlp -> tensor, of size 1
    assert dense["bias"].spec == P(None)
    plain = shardings["params"]["plain"]  # no logical names: replicated
    assert plain.spec == P(None) and plain.is_fully_replicated


def test_batch_sharding_and_global_array():
    mesh = make_mesh({"data": 4, "fsdp": 2})
    assert batch_sharding(mesh, 3).spec == P(("data", "fsdp"), None, None)
    assert batch_shards(mesh) == 8 and batch_shards(make_mesh({"data": 2, "tensor": 4})) == 2
    assert batch_sharding(make_mesh({"tensor": 8}), 2).spec == P(None, None)
    local = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    array = global_batch_array(local, mesh)
    assert [s.data.shape for s in array.addressable_shards] == [(2, 3)] * 8
    np.testing.assert_array_equal(np.asarray(array), local)
