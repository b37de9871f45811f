"""nclm.nn layers against PyTorch on the same weights, and against EnCodec's padding rule.

Layouts: our conv kernel is [K, C_in/groups, C_out] (torch [C_out, C_in/groups, K]); our transposed
conv kernel is [K, C_in, C_out] (torch [C_in, C_out, K]). Weight norm follows torch's dim=0: per
output channel for Conv1d, per input channel for ConvTranspose1d.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nclm.nn import (
    AdaLayerNorm,
    Conv1d,
    ConvNeXtBlock,
    ConvTranspose1d,
    LSTMLayer,
    ResidualLSTM,
    Snake,
    conv_output_length,
    conv_transpose_output_length,
)
from tests.conftest import optional

# Snake, AdaLN, the LSTM's and the initialisers' tests run without torch; the others need it.
torch = optional("torch")
F = torch.nn.functional if torch else None
weight_norm = torch.nn.utils.parametrizations.weight_norm if torch else None
needs_torch = pytest.mark.needs("torch")

TOL = 1e-5


def _to_torch(x: np.ndarray):
    """Channels-last [B, T, C] -> torch [B, C, T]."""
    return torch.from_numpy(np.ascontiguousarray(np.swapaxes(x, 1, 2)))


def _from_torch(y) -> np.ndarray:
    return np.swapaxes(y.detach().numpy(), 1, 2)


def _randn(*shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _conv_params(conv, wn: bool) -> dict:
    """Our Conv1d params from a torch Conv1d (weight-normed or plain)."""
    bias = {"bias": conv.bias.detach().numpy()}
    if not wn:
        return {"kernel": conv.weight.detach().numpy().transpose(2, 1, 0), **bias}
    g = conv.parametrizations.weight.original0.detach().numpy()  # [C_out, 1, 1]
    v = conv.parametrizations.weight.original1.detach().numpy()  # [C_out, C_in/g, K]
    return {"weight_g": g.reshape(-1), "weight_v": v.transpose(2, 1, 0), **bias}


def _torch_conv(c_in, c_out, k, wn, seed=0, **kw):
    torch.manual_seed(seed)
    conv = torch.nn.Conv1d(c_in, c_out, k, **kw)
    if wn:
        conv = weight_norm(conv)
        with torch.no_grad():  # make g differ from ||v|| so the magnitude actually matters
            g = conv.parametrizations.weight.original0
            g.mul_(torch.rand_like(g) + 0.5)
    return conv


CONV_CASES = [  # c_in, c_out, kernel, stride, dilation, groups, padding
    (3, 5, 7, 1, 1, 1, 3),
    (4, 6, 3, 1, 3, 1, 3),
    (4, 8, 8, 4, 1, 1, 2),
    (6, 6, 7, 1, 1, 6, 3),  # depthwise (a sum of shifted copies, not a grouped conv)
    (6, 6, 3, 1, 2, 6, 2),  # depthwise, dilated
    (4, 8, 3, 1, 1, 4, 1),  # one group per input channel, two outputs each: a grouped conv
    (4, 6, 5, 2, 2, 2, 0),
]


@needs_torch
@pytest.mark.parametrize("wn", [True, False], ids=["weight_norm", "plain"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(map(str, c)))
def test_conv1d_matches_torch(case, wn):
    c_in, c_out, k, s, d, g, p = case
    conv = _torch_conv(c_in, c_out, k, wn, stride=s, dilation=d, groups=g, padding=p)
    x = _randn(2, 23, c_in)
    layer = Conv1d(c_out, k, s, d, g, padding=p, weight_norm=wn)
    y = np.asarray(layer.apply({"params": _conv_params(conv, wn)}, jnp.asarray(x)))
    ref = _from_torch(conv(_to_torch(x)))
    assert y.shape == ref.shape
    assert y.shape[1] == conv_output_length(23, k, s, d, p)
    np.testing.assert_allclose(y, ref, atol=TOL, rtol=0)


def test_conv1d_init_weight_norm_per_output_channel():
    p = nn.meta.unbox(Conv1d(4, 3, groups=2).init(jax.random.key(0), jnp.zeros((1, 10, 6))))
    p = p["params"]
    assert p["weight_v"].shape == (3, 3, 4) and p["weight_g"].shape == (4,)
    np.testing.assert_allclose(
        p["weight_g"], np.sqrt((np.asarray(p["weight_v"]) ** 2).sum(axis=(0, 1))), rtol=1e-6
    )


def _encodec_pad(x, kernel: int, stride: int, dilation: int, causal: bool, mode: str):
    """EnCodec's SConv1d padding (encodec/modules/conv.py), written out again in torch."""
    k = (kernel - 1) * dilation + 1
    total = k - stride
    length = x.shape[-1]
    n_frames = (length - k + total) / stride + 1
    extra = (math.ceil(n_frames) - 1) * stride + (k - total) - length
    if causal:
        left, right = total, extra
    else:
        right = total // 2
        left, right = total - right, right + extra
    if mode != "reflect":
        return F.pad(x, (left, right), "constant", 0.0)
    zeros = max(left, right) - length + 1 if length <= max(left, right) else 0
    x = F.pad(x, (0, zeros))
    padded = F.pad(x, (left, right), "reflect")
    return padded[..., : padded.shape[-1] - zeros]


PAD_CASES = [  # kernel, stride, dilation
    (7, 1, 1),
    (4, 2, 1),
    (3, 1, 2),
    (10, 5, 1),
    (16, 8, 1),
]


@needs_torch
@pytest.mark.parametrize("mode", ["reflect", "constant"])
@pytest.mark.parametrize("padding", ["causal", "centered"])
@pytest.mark.parametrize("case", PAD_CASES, ids=lambda c: "k{}-s{}-d{}".format(*c))
def test_conv1d_encodec_padding(case, padding, mode):
    k, s, d = case
    conv = _torch_conv(3, 4, k, True, seed=1, stride=s, dilation=d)
    apply = jax.jit(Conv1d(4, k, s, d, padding=padding, pad_mode=mode).apply)
    params = {"params": _conv_params(conv, True)}
    for length in (1, 3, 5, 16, 17, 20):  # shorter than the kernel, on and off the stride grid
        x = _randn(2, length, 3, seed=length)
        y = np.asarray(apply(params, jnp.asarray(x)))
        xt = _encodec_pad(_to_torch(x), k, s, d, padding == "causal", mode)
        ref = _from_torch(F.conv1d(xt, conv.weight, conv.bias, s, 0, d))
        assert y.shape == ref.shape, (length, y.shape, ref.shape)
        assert conv_output_length(length, k, s, d, padding) == y.shape[1] == math.ceil(length / s)
        np.testing.assert_allclose(y, ref, atol=TOL, rtol=0, err_msg=f"length {length}")


def _torch_conv_transpose(c_in, c_out, k, s, trim, seed=0):
    torch.manual_seed(seed)
    conv = weight_norm(torch.nn.ConvTranspose1d(c_in, c_out, k, s, padding=trim))
    with torch.no_grad():
        g = conv.parametrizations.weight.original0
        g.mul_(torch.rand_like(g) + 0.5)
    return conv


def _transpose_params(conv) -> dict:
    g = conv.parametrizations.weight.original0.detach().numpy()  # [C_in, 1, 1]
    v = conv.parametrizations.weight.original1.detach().numpy()  # [C_in, C_out, K]
    return {
        "weight_g": g.reshape(-1),
        "weight_v": v.transpose(2, 0, 1),
        "bias": conv.bias.detach().numpy(),
    }


TRANSPOSE_CASES = [(4, 2), (8, 4), (7, 3), (3, 1), (10, 5), (5, 4)]  # kernel, stride


@needs_torch
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=lambda c: "k{}-s{}".format(*c))
def test_conv_transpose1d_matches_torch(case):
    k, s = case
    x = _randn(2, 9, 5)
    for trim in sorted({0, 1, math.ceil(s / 2)}):
        if 2 * trim >= (9 - 1) * s + k:
            continue
        conv = _torch_conv_transpose(5, 3, k, s, trim)
        layer = ConvTranspose1d(3, k, s, trim=trim)
        y = np.asarray(layer.apply({"params": _transpose_params(conv)}, jnp.asarray(x)))
        ref = _from_torch(conv(_to_torch(x)))
        assert y.shape == ref.shape
        assert y.shape[1] == conv_transpose_output_length(9, k, s, trim)
        np.testing.assert_allclose(y, ref, atol=TOL, rtol=0, err_msg=f"trim {trim}")


@needs_torch
@pytest.mark.parametrize("trim", ["causal", "centered"])
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=lambda c: "k{}-s{}".format(*c))
def test_conv_transpose1d_encodec_trim(case, trim):
    """EnCodec's SConvTranspose1d: full output, then k - s samples removed (causal: all from the
    right; centered: right gets total // 2)."""
    k, s = case
    conv = _torch_conv_transpose(4, 3, k, s, 0, seed=2)
    apply = jax.jit(ConvTranspose1d(3, k, s, trim=trim).apply)
    params = {"params": _transpose_params(conv)}
    for length in (1, 2, 7):
        x = _randn(1, length, 4, seed=length)
        full = _from_torch(conv(_to_torch(x)))
        total = k - s
        right = total if trim == "causal" else total // 2
        ref = full[:, total - right : full.shape[1] - right]
        y = np.asarray(apply(params, jnp.asarray(x)))
        assert y.shape == ref.shape
        assert y.shape[1] == conv_transpose_output_length(length, k, s, trim) == length * s
        np.testing.assert_allclose(y, ref, atol=TOL, rtol=0, err_msg=f"length {length}")


def test_conv_transpose1d_init_norm_per_input_channel():
    v = ConvTranspose1d(3, 4, 2).init(jax.random.key(0), jnp.zeros((1, 5, 6)))["params"]
    v = nn.meta.unbox(v)
    assert v["weight_v"].shape == (4, 6, 3) and v["weight_g"].shape == (6,)
    np.testing.assert_allclose(
        v["weight_g"], np.sqrt((np.asarray(v["weight_v"]) ** 2).sum(axis=(0, 2))), rtol=1e-6
    )


def _lstm_params(lstm, num_layers: int) -> dict:
    out = {}
    for k in range(num_layers):
        w = {
            n: getattr(lstm, f"{n}_l{k}").detach().numpy()
            for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        }
        out[f"layer_{k}"] = {
            "w_ih": w["weight_ih"].T,
            "w_hh": w["weight_hh"].T,
            "bias": w["bias_ih"] + w["bias_hh"],
        }
    return out


@needs_torch
def test_lstm_matches_torch():
    torch.manual_seed(0)
    dim, steps = 16, 50
    lstm = torch.nn.LSTM(dim, dim, num_layers=2, batch_first=True)
    params = _lstm_params(lstm, 2)
    x = _randn(3, steps, dim)
    ref, _ = lstm(torch.from_numpy(x))
    ref = ref.detach().numpy()

    y = ResidualLSTM(2).apply({"params": params}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), ref + x, atol=TOL, rtol=0)

    y0 = LSTMLayer(dim).apply({"params": params["layer_0"]}, jnp.asarray(x))
    torch.manual_seed(0)
    one = torch.nn.LSTM(dim, dim, num_layers=1, batch_first=True)
    with torch.no_grad():
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(one, f"{n}_l0").copy_(getattr(lstm, f"{n}_l0"))
    ref0, _ = one(torch.from_numpy(x))
    np.testing.assert_allclose(np.asarray(y0), ref0.detach().numpy(), atol=TOL, rtol=0)


def test_lstm_init_shapes():
    p = nn.meta.unbox(ResidualLSTM(2).init(jax.random.key(0), jnp.zeros((1, 3, 8)))["params"])
    assert set(p) == {"layer_0", "layer_1"}
    assert p["layer_0"]["w_ih"].shape == (8, 32) and p["layer_0"]["w_hh"].shape == (8, 32)
    assert p["layer_0"]["bias"].shape == (32,)
    assert np.abs(np.asarray(p["layer_0"]["w_hh"])).max() <= 1 / np.sqrt(8)


def test_snake_formula():
    x = _randn(2, 11, 4)
    alpha = np.array([0.5, 1.0, 2.0, 3.5], np.float32)
    y = Snake().apply({"params": {"alpha": alpha}}, jnp.asarray(x))
    ref = x + np.sin(alpha * x) ** 2 / (alpha + 1e-9)
    np.testing.assert_allclose(np.asarray(y), ref, atol=TOL, rtol=0)
    init = nn.meta.unbox(Snake().init(jax.random.key(0), jnp.asarray(x)))["params"]["alpha"]
    np.testing.assert_array_equal(init, np.ones(4))


def _layer_norm(x, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def test_ada_layer_norm():
    x = _randn(3, 7, 8)
    cond = jnp.array([0, 2, 1])
    layer = AdaLayerNorm(4)
    params = nn.meta.unbox(layer.init(jax.random.key(0), jnp.asarray(x), cond))["params"]
    assert params["scale"].shape == (4, 8) and params["shift"].shape == (4, 8)
    # At init (scale 1, shift 0) it is a parameter-free LayerNorm.
    y = layer.apply({"params": params}, jnp.asarray(x), cond)
    np.testing.assert_allclose(np.asarray(y), _layer_norm(x), atol=TOL, rtol=0)
    # Each batch item uses its own condition row.
    scale, shift = _randn(4, 8, seed=1), _randn(4, 8, seed=2)
    y = layer.apply({"params": {"scale": scale, "shift": shift}}, jnp.asarray(x), cond)
    c = np.asarray(cond)
    ref = _layer_norm(x) * scale[c][:, None] + shift[c][:, None]
    np.testing.assert_allclose(np.asarray(y), ref, atol=TOL, rtol=0)


@needs_torch
def test_convnext_block_matches_torch():
    """Vocos' ConvNeXtBlock: depthwise conv k7 -> LayerNorm -> Linear -> GELU -> Linear, scaled by
    gamma and added to the input."""
    dim, hidden = 8, 24
    x = _randn(2, 13, dim)
    block = ConvNeXtBlock(hidden, layer_scale=0.125)
    params = nn.meta.unbox(block.init(jax.random.key(0), jnp.asarray(x)))["params"]
    assert params["dwconv"]["kernel"].shape == (7, 1, dim)
    assert params["pwconv1"]["kernel"].shape == (dim, hidden)
    np.testing.assert_array_equal(params["gamma"], np.full(dim, 0.125, np.float32))
    assert block.apply({"params": params}, jnp.asarray(x)).shape == x.shape

    rng = np.random.default_rng(3)
    params = jax.tree_util.tree_map(
        lambda p: rng.standard_normal(p.shape).astype(np.float32) * 0.5, params
    )
    y = np.asarray(block.apply({"params": params}, jnp.asarray(x)))

    t = lambda a: torch.from_numpy(np.asarray(a))
    p = params
    h = F.conv1d(
        _to_torch(x),
        t(p["dwconv"]["kernel"]).permute(2, 1, 0),
        t(p["dwconv"]["bias"]),
        padding=3,
        groups=dim,
    ).transpose(1, 2)
    h = F.layer_norm(h, (dim,), t(p["norm"]["scale"]), t(p["norm"]["bias"]), eps=1e-6)
    h = F.gelu(F.linear(h, t(p["pwconv1"]["kernel"]).T, t(p["pwconv1"]["bias"])))
    h = F.linear(h, t(p["pwconv2"]["kernel"]).T, t(p["pwconv2"]["bias"]))
    ref = x + (t(p["gamma"]) * h).numpy()
    np.testing.assert_allclose(y, ref, atol=TOL, rtol=0)


def test_convnext_block_conditioned_shapes():
    x = jnp.zeros((2, 5, 8))
    cond = jnp.array([0, 1])
    block = ConvNeXtBlock(16, 0.5, num_conditions=3)
    params = nn.meta.unbox(block.init(jax.random.key(0), x, cond))["params"]
    assert params["norm"]["scale"].shape == (3, 8)
    assert block.apply({"params": params}, x, cond).shape == x.shape


@pytest.mark.parametrize("kernel", [5, 4])
def test_conformer_depthwise_equals_flax_grouped_conv(kernel):
    """The Conformer's depthwise conv (a sum of shifted copies) has flax nn.Conv's parameters and
    gives its output, odd and even kernels ("SAME" padding), in float32 and bfloat16."""
    from nclm.nn.transformer import DepthwiseConv

    x = jnp.asarray(_randn(2, 19, 16, seed=3))
    for dtype, tol in ((jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)):  # bf16: ~1 ulp, relative
        ours = DepthwiseConv(kernel, dtype)
        ref = nn.Conv(16, (kernel,), padding="SAME", feature_group_count=16, dtype=dtype)
        params = nn.meta.unbox(ours.init(jax.random.PRNGKey(0), x))
        params["params"]["bias"] = jnp.asarray(_randn(16, seed=4))
        assert jax.tree.map(jnp.shape, params) == jax.tree.map(
            jnp.shape, ref.init(jax.random.PRNGKey(0), x)
        )
        y, expected = ours.apply(params, x), ref.apply(params, x)
        assert y.dtype == expected.dtype == dtype
        np.testing.assert_allclose(
            np.asarray(y, np.float32), np.asarray(expected, np.float32), atol=tol, rtol=tol
        )
