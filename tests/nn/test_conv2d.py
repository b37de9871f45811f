"""Conv2d against torch.nn.Conv2d on the same weights.

Layouts: ours x[B, T, F, C] and kernel [kt, kf, C_in/groups, C_out]; torch x[B, C, T, F] and
weight [C_out, C_in/groups, kt, kf]. Weight norm is torch's dim=0: per output channel.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from nclm.nn import Conv2d, conv2d_output_shape
from tests.conftest import optional

# The init and error tests run without torch; the parity tests need it.
torch = optional("torch")
F = torch.nn.functional if torch else None
weight_norm = torch.nn.utils.parametrizations.weight_norm if torch else None
needs_torch = pytest.mark.needs("torch")

TOL = 1e-5


def _to_torch(x: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _from_torch(y) -> np.ndarray:
    return y.detach().numpy().transpose(0, 2, 3, 1)


def _params(conv, wn: bool) -> dict:
    bias = {"bias": conv.bias.detach().numpy()}
    if not wn:
        return {"kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0), **bias}
    g = conv.parametrizations.weight.original0.detach().numpy()  # [C_out, 1, 1, 1]
    v = conv.parametrizations.weight.original1.detach().numpy()  # [C_out, C_in/g, kt, kf]
    return {"weight_g": g.reshape(-1), "weight_v": v.transpose(2, 3, 1, 0), **bias}


def _torch_conv(c_in, c_out, kernel, wn, seed=0, **kw):
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(c_in, c_out, kernel, **kw)
    if wn:
        conv = weight_norm(conv)
        with torch.no_grad():  # g != ||v||, so the magnitude matters
            g = conv.parametrizations.weight.original0
            g.mul_(torch.rand_like(g) + 0.5)
    return conv


CASES = [  # c_in, c_out, kernel, strides, dilation, groups, padding
    (2, 4, (3, 9), (1, 1), (1, 1), 1, (1, 4)),  # MS-STFT first layer
    (4, 6, (3, 9), (1, 2), (2, 1), 1, (2, 4)),  # MS-STFT dilated, strided on F
    (1, 8, (5, 1), (3, 1), (1, 1), 1, (2, 0)),  # MPD
    (4, 8, (3, 3), (2, 2), (1, 2), 2, (0, 1)),  # grouped, strided and dilated both ways
    (6, 6, (3, 3), (1, 1), (1, 1), 6, (1, 1)),  # depthwise
]


@needs_torch
@pytest.mark.parametrize("wn", [True, False], ids=["weight_norm", "plain"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)).replace(" ", ""))
def test_conv2d_matches_torch(case, wn):
    c_in, c_out, k, s, d, g, p = case
    conv = _torch_conv(c_in, c_out, k, wn, stride=s, dilation=d, groups=g, padding=p)
    x = np.random.default_rng(0).standard_normal((2, 17, 23, c_in)).astype(np.float32)
    layer = Conv2d(c_out, k, strides=s, dilation=d, padding=p, groups=g, weight_norm=wn)
    y = np.asarray(layer.apply({"params": _params(conv, wn)}, jnp.asarray(x)))
    ref = _from_torch(conv(_to_torch(x)))
    assert y.shape == ref.shape
    assert y.shape[1:3] == conv2d_output_shape((17, 23), k, s, d, p)
    np.testing.assert_allclose(y, ref, atol=TOL, rtol=0)


@needs_torch
def test_conv2d_asymmetric_padding_matches_torch_pad():
    """((t_left, t_right), (f_left, f_right)) equals torch F.pad then an unpadded conv."""
    conv = _torch_conv(3, 5, (3, 4), True, seed=1)
    x = np.random.default_rng(1).standard_normal((1, 9, 11, 3)).astype(np.float32)
    pad = ((2, 0), (1, 3))
    layer = Conv2d(5, (3, 4), padding=pad)
    y = np.asarray(layer.apply({"params": _params(conv, True)}, jnp.asarray(x)))
    xt = F.pad(_to_torch(x), (1, 3, 2, 0))  # torch order: (F_left, F_right, T_left, T_right)
    ref = _from_torch(conv(xt))
    np.testing.assert_allclose(y, ref, atol=TOL, rtol=0)
    assert y.shape[1:3] == conv2d_output_shape((9, 11), (3, 4), padding=pad) == (9, 12)


def test_conv2d_init_weight_norm_and_logical_axes():
    variables = Conv2d(6, (3, 5), groups=2).init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))
    specs = nn.get_partition_spec(variables)["params"]
    assert specs["weight_v"] == PartitionSpec(None, None, "conv_in", "conv_out")
    assert specs["weight_g"] == PartitionSpec("conv_out")
    assert specs["bias"] == PartitionSpec("conv_out")
    p = nn.meta.unbox(variables)["params"]
    assert p["weight_v"].shape == (3, 5, 2, 6) and p["weight_g"].shape == (6,)
    norms = np.sqrt((np.asarray(p["weight_v"]) ** 2).sum(axis=(0, 1, 2)))
    np.testing.assert_allclose(p["weight_g"], norms, rtol=1e-6)  # w = v at initialisation


def test_conv2d_rejects_bad_groups_and_rank():
    with pytest.raises(ValueError, match="groups=4"):
        Conv2d(6, (3, 3), groups=4).init(jax.random.key(0), jnp.zeros((1, 4, 4, 6)))
    with pytest.raises(ValueError, match=r"x\[B, T, F, C\]"):
        Conv2d(6, (3, 3)).init(jax.random.key(0), jnp.zeros((1, 4, 6)))
