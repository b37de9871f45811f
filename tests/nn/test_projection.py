"""Projection in its training layout (in_out) == flax's DenseGeneral: same parameter shapes and
numbers from the same key, same outputs; in the decoding layout (out_in) with converted kernels ==
in_out, for few rows (the feature-major product) and many (the usual one)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nclm.nn import init as initializers
from nclm.nn.projection import _FEW_ROWS, Projection, to_out_in

# (input trailing shape, features, num_in, kernel axes, bias): the block's three kinds
KINDS = {
    "ffn": ((24,), 40, 1, ("embed", "mlp"), True),
    "heads_in": ((24,), (3, 8), 1, ("embed", "heads", "kv"), False),
    "heads_out": ((3, 8), 24, 2, ("heads", "kv", "embed"), False),
}
INIT = initializers.truncated_normal(0.2)


def _x(lead, trailing, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=lead + trailing), jnp.float32)


def _unbox(tree):
    return nn.meta.unbox(tree)


@pytest.mark.parametrize("kind", list(KINDS))
def test_in_out_equals_dense_general(kind):
    trailing, features, num_in, axes, bias = KINDS[kind]
    x = _x((2, 5), trailing)
    key = jax.random.key(3)
    ours = Projection(features, axes, INIT, num_in=num_in, use_bias=bias)
    ref = nn.DenseGeneral(
        features,
        axis=tuple(range(-num_in, 0)),
        kernel_init=nn.with_logical_partitioning(INIT, axes),
        use_bias=bias,
    )
    p_ours, p_ref = _unbox(ours.init(key, x)), _unbox(ref.init(key, x))
    assert jax.tree.map(jnp.shape, p_ours) == jax.tree.map(jnp.shape, p_ref)
    np.testing.assert_array_equal(p_ours["params"]["kernel"], p_ref["params"]["kernel"])
    if bias:  # zeros at init: give it values, so that adding it is checked
        p_ref["params"]["bias"] = jnp.arange(features, dtype=jnp.float32) / 7
    np.testing.assert_allclose(ours.apply(p_ref, x), ref.apply(p_ref, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("lead", [(1, 1), (3, 1), (2, _FEW_ROWS)])  # steps; a prefill's many rows
def test_out_in_equals_in_out(kind, lead):
    trailing, features, num_in, axes, bias = KINDS[kind]
    x = _x(lead, trailing, seed=1)
    key = jax.random.key(4)
    train = Projection(features, axes, INIT, num_in=num_in, use_bias=bias)
    decode = Projection(features, axes, INIT, num_in=num_in, use_bias=bias, layout="out_in")
    params = _unbox(train.init(key, x))["params"]
    if bias:
        params["bias"] = jnp.arange(features, dtype=jnp.float32) / 7
    converted = dict(params, kernel=to_out_in(params["kernel"], num_in))
    # drawn from the same numbers: an out_in init is the converted in_out init
    np.testing.assert_array_equal(
        _unbox(decode.init(key, x))["params"]["kernel"], converted["kernel"]
    )
    want = train.apply({"params": params}, x)
    got = jax.jit(decode.apply)({"params": converted}, x)
    out = features if isinstance(features, tuple) else (features,)
    assert got.shape == want.shape == lead + out
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_few_rows_take_the_feature_major_product():
    """On the CPU, up to _FEW_ROWS rows the out_in product comes out [out, rows] behind a
    barrier; past them the usual [rows, out] product (other backends: always the usual one)."""
    decode = Projection(40, ("embed", "mlp"), INIT, layout="out_in")
    params = {"params": {"kernel": jnp.ones((40, 24)), "bias": jnp.zeros((40,))}}

    def text(rows):
        return jax.jit(decode.apply).lower(params, jnp.ones((rows, 24))).as_text()

    assert "optimization_barrier" in text(_FEW_ROWS)
    assert "optimization_barrier" not in text(_FEW_ROWS + 1)


@pytest.mark.parametrize("kind", ["heads_in", "heads_out"])
@pytest.mark.parametrize("rows", [1, 2 * _FEW_ROWS])
def test_out_in_heads_kernel_is_not_copied(kind, rows):
    """The [N, H, in] / [out, N, H] kernels enter the product as they lie: no transposed copy
    of the kernel per call (XLA makes one for an N-D dot_general's rhs in [*out, *in] order;
    that was 48 copies, 177 MB of temporaries, per VALL-E prefill)."""
    trailing, features, num_in, axes, _ = KINDS[kind]
    decode = Projection(features, axes, INIT, num_in=num_in, use_bias=False, layout="out_in")
    x = jnp.ones((rows,) + trailing)
    params = decode.init(jax.random.key(0), x)
    text = jax.jit(decode.apply).lower(params, x).compile().as_text()
    entry = text[text.index("ENTRY") :].splitlines()
    kernel = next(line.split("=")[0].strip() for line in entry if "parameter(0)" in line)
    uses = [line for line in entry if kernel + ")" in line or kernel + "," in line]
    assert uses and all(
        " copy(" not in line and " transpose(" not in line and "kind=kLoop" not in line
        for line in uses
    ), uses


def test_unknown_layout_is_an_error():
    with pytest.raises(ValueError, match="kernel layout 'col'"):
        layer = Projection(4, ("embed", "mlp"), INIT, layout="col")
        layer.init(jax.random.key(0), jnp.ones((1, 3)))
