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
    constrain,
    global_batch_array,
    logical_to_spec,
    make_mesh,
    tree_shardings,
    with_activation_sharding,
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


def test_undivided_dimension_warns_once_naming_the_parameter(caplog):
    """A dimension at least as large as its mesh axis but not a multiple of it is replicated
    with one warning naming the parameter (not repeated for its optimizer moments); one smaller
    than the axis (1 output channel on fsdp=2) is replicated quietly, by design."""
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    head = jax.ShapeDtypeStruct((64, 17), jnp.float32)
    conv = jax.ShapeDtypeStruct((8, 1), jnp.float32)
    specs = {"ar_head": P("embed", "vocab"), "out_conv": P("conv_in", "conv_out")}
    params = {"ar_head": head, "out_conv": conv}
    tree = {"params": params, "opt_state": {"mu": params, "nu": params}}  # as optax's moments
    logical = {"params": specs, "opt_state": {"mu": specs, "nu": specs}}
    with caplog.at_level("WARNING", logger="nclm.sharding"):
        shardings = tree_shardings(logical, tree, mesh)
    assert shardings["params"]["ar_head"].spec == P("fsdp", None)
    assert shardings["params"]["out_conv"].spec == P(None, None)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1, messages
    assert "params/ar_head" in messages[0] and "dimension 1 ('vocab', size 17)" in messages[0]
    assert "tensor=2" in messages[0]


def test_constrain_applies_the_rules_only_inside_activation_sharding():
    mesh = make_mesh({"data": 4, "tensor": 2})

    def f(x):
        return constrain(x * 2, ("batch", "length", "mlp"))

    x = jnp.ones((8, 3, 6))
    assert "sharding_constraint" not in jax.jit(f).lower(x).as_text()
    sharded = jax.jit(with_activation_sharding(f, mesh))
    assert '[{"data"}, {}, {"tensor"}]' in sharded.lower(x).as_text()
    out = sharded(x)
    assert out.sharding.spec == P("data", None, "tensor")
    np.testing.assert_array_equal(np.asarray(out), 2 * np.ones((8, 3, 6)))
    one = make_mesh({"data": 1}, jax.devices()[:1])  # one device: nothing to constrain
    assert "sharding_constraint" not in jax.jit(with_activation_sharding(f, one)).lower(x).as_text()
