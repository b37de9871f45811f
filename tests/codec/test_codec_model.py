"""The Codec module: `eval_shape` on every full-size preset (nothing materialised), the EnCodec
24 kHz parameter count against transformers, and real init/encode/decode/train on the tiny presets.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from nclm.codec import config as C
from nclm.codec.model import Codec, init_codec, num_params
from nclm.codec.vocos import VocosDecoder
from nclm.nn import conv_transpose_output_length

FULL_PRESETS = {
    "encodec_24khz": C.encodec_24khz(),
    "encodec_24khz_32": C.encodec_24khz(32),
    "encodec_16khz": C.encodec_16khz(),
    "dac_16khz": C.dac(16000),
    "dac_24khz": C.dac(24000),
    "dac_44khz": C.dac(44100),
    **{f"cmp4k_{v}": C.codec_comparison_4kbps(v) for v in ("ema", "ema_vocos", "dac", "dac_vocos")},
}


def _abstract_variables(cfg: C.CodecConfig, num_samples: int):
    model = Codec(cfg)

    def init(key):
        k1, k2 = jax.random.split(key)
        return nn.meta.unbox(
            model.init({"params": k1, "codebooks": k2}, jnp.zeros((1, num_samples), jnp.float32))
        )

    return model, jax.eval_shape(init, jax.random.key(0))


def _decoded_length(cfg: C.CodecConfig, frames: int) -> int:
    """Waveform length the decoder produces from `frames` frames. SEANet's trims and the Vocos
    iSTFT give frames * hop; DAC's transposed convs (k = 2s, padding ceil(s/2)) lose
    2 ceil(s/2) - s samples per odd stride, as in the reference DAC."""
    if cfg.decoder == "vocos" or cfg.network.kind == "seanet":
        return frames * cfg.hop_length
    length = frames
    for s in reversed(cfg.network.strides):
        length = conv_transpose_output_length(length, 2 * s, s, math.ceil(s / 2))
    return length


@pytest.mark.parametrize("name", list(FULL_PRESETS))
def test_full_size_presets_eval_shape(name):
    cfg = FULL_PRESETS[name]
    hop, num_q = cfg.hop_length, cfg.num_codebooks
    model, variables = _abstract_variables(cfg, 2 * hop)
    books = variables.get("codebooks")
    if cfg.quantizer.kind == "ema":
        books = books["quantizer"]
        assert books["embed"].shape == (num_q, cfg.codebook_size, cfg.network.latent_dim)
    else:
        assert books is None
        shape = (num_q, cfg.codebook_size, cfg.quantizer.codebook_dim)
        assert variables["params"]["quantizer"]["codebook"].shape == shape
    assert num_params(variables) > 1_000_000

    encode = lambda v, w: model.apply(v, w, method="encode")
    decode = lambda v, c: model.apply(v, c, method="decode")
    # The interface pads to whole frames; SEANet's padding also handles any other length.
    lengths = [hop * 5] + ([hop * 3 - 1] if cfg.network.kind == "seanet" else [])
    for length in lengths:
        wav = jax.ShapeDtypeStruct((1, length), jnp.float32)
        codes = jax.eval_shape(encode, variables, wav)
        frames = math.ceil(length / hop)
        assert codes.shape == (1, num_q, frames) and codes.dtype == jnp.int32
        out = jax.eval_shape(decode, variables, codes)
        assert out.shape == (1, _decoded_length(cfg, frames)) and out.dtype == jnp.float32
    codes = jax.ShapeDtypeStruct((1, 1, 5), jnp.int32)  # fewer levels decode too
    assert jax.eval_shape(decode, variables, codes).shape == (1, _decoded_length(cfg, 5))
    # The training forward returns a waveform of the input's length.
    wav = jax.ShapeDtypeStruct(
        (2, hop * 5 + (3 if cfg.network.kind == "seanet" else 0)), jnp.float32
    )
    train = lambda v, w: model.apply(
        v, w, train=True, rngs={"dropout": jax.random.key(1), "codebooks": jax.random.key(2)}
    )
    out = jax.eval_shape(train, variables, wav)
    frames = math.ceil(wav.shape[1] / hop)
    assert out.wav.shape == wav.shape and out.quantizer.codes.shape == (2, num_q, frames)


@pytest.mark.needs("torch", "transformers")
def test_encodec_24khz_params_match_transformers():
    """Our 32-level EnCodec 24 kHz has transformers' EncodecModel trainable parameters, less the
    LSTMs' second bias (ours stores bias_ih + bias_hh as one), and the same codebook entries."""
    import torch
    import transformers

    ref_cfg = transformers.EncodecConfig()
    with torch.device("meta"):  # shapes only
        ref = transformers.EncodecModel(ref_cfg)
    ref_params = sum(p.numel() for p in ref.parameters())
    ref_bias_hh = sum(p.numel() for n, p in ref.named_parameters() if "bias_hh" in n)
    ref_embed = sum(b.numel() for n, b in ref.named_buffers() if n.endswith("codebook.embed"))

    cfg = C.encodec_24khz(32)
    assert (ref_cfg.num_quantizers, ref_cfg.codebook_size) == (32, cfg.codebook_size)
    _, variables = _abstract_variables(cfg, 4 * cfg.hop_length)
    ours = num_params(variables)
    assert ours == ref_params - ref_bias_hh
    assert abs(ours - ref_params) / ref_params < 0.01
    assert variables["codebooks"]["quantizer"]["embed"].size == ref_embed == 32 * 1024 * 128
    assert 14.8e6 < ours < 14.9e6


# ---------------------------------------------------------------------------------------------
# Tiny presets: real variables. Compiling is most of the cost on a CPU, so every program is
# compiled once per preset and reused: init, encode, latent -> waveform, training forward.
# Decoding from Q' levels is the quantizer's decode (cheap to compile) followed by the shared
# synthesis, which is exactly what Codec.decode does.

TINY = {
    "seanet": C.tiny("seanet"),
    "dac": C.tiny("dac"),
    "seanet_vocos": C.tiny("seanet", "vocos"),
    "dac_vocos": C.tiny("dac", "vocos"),
}
FRAMES = 6


class _Tiny:
    def __init__(self, name: str):
        cfg = self.cfg = TINY[name]
        model = Codec(cfg)
        key = jax.random.key(0)
        if cfg.decoder == "vocos":
            # Encoder and quantizer as in the waveform preset (same code, same compile); only the
            # Vocos decoder is initialised here. The result must be what Codec.init makes.
            base = _tiny(name.removesuffix("_vocos"))
            decoder = VocosDecoder(cfg.vocos, cfg.hop_length, cfg.num_codebooks)
            z = jnp.zeros((1, FRAMES, cfg.network.latent_dim), jnp.float32)
            dec = nn.meta.unbox(jax.jit(decoder.init)(key, z))["params"]
            self.variables = {
                **base.variables,
                "params": {**base.variables["params"], "decoder": dec},
            }
            _, expected = _abstract_variables(cfg, FRAMES * cfg.hop_length)
            shapes = lambda t: jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), t)
            assert shapes(self.variables) == shapes(expected)
            self.encode = base.encode
        else:
            self.variables = init_codec(cfg, key, FRAMES * cfg.hop_length)
            self.encode = jax.jit(functools.partial(model.apply, method="encode"))
        self.dequantize = jax.jit(
            lambda v, c: model.apply(v, c, method=lambda m, c: m.quantizer.decode(c))
        )
        self.synthesize = jax.jit(
            lambda v, z, levels: model.apply(
                v, z, levels, method=lambda m, z, n: m._decode_latent(z, n)
            )
        )

        def train(variables, wav, mask, key):
            k1, k2 = jax.random.split(key)
            rngs = {"dropout": k1, "codebooks": k2}
            return model.apply(variables, wav, train=True, mask=mask, rngs=rngs)

        self.train = jax.jit(train)

    def decode(self, variables, codes):
        """Codec.decode: quantizer.decode, then the decoder told the number of levels."""
        z = self.dequantize(variables, codes)
        return self.synthesize(variables, z, jnp.int32(codes.shape[1]))


@functools.cache
def _tiny(name: str) -> _Tiny:
    return _Tiny(name)


def _wav(batch: int, length: int, seed: int = 0) -> jnp.ndarray:
    t = np.arange(length) / 16000
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * (150 + 50 * rng.random((batch, 1))) * t)
    return jnp.asarray(x + 0.05 * rng.standard_normal((batch, length)), jnp.float32)


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_init_encode_decode(name):
    tiny = _tiny(name)
    cfg, variables = tiny.cfg, tiny.variables
    hop, num_q = cfg.hop_length, cfg.num_codebooks
    assert num_params(variables) < 1_000_000
    if cfg.quantizer.kind == "ema":
        books = variables["codebooks"]["quantizer"]
        assert books["embed"].shape == (num_q, cfg.codebook_size, cfg.network.latent_dim)
    wav = _wav(2, FRAMES * hop)
    codes = tiny.encode(variables, wav)
    assert codes.shape == (2, num_q, FRAMES) and codes.dtype == jnp.int32
    assert int(codes.min()) >= 0 and int(codes.max()) < cfg.codebook_size
    outs = []
    for levels in range(1, num_q + 1):  # any number of levels decodes
        out = tiny.decode(variables, codes[:, :levels])
        assert out.shape == (2, _decoded_length(cfg, FRAMES))
        assert np.isfinite(np.asarray(out)).all()
        outs.append(np.asarray(out))
    assert not np.allclose(outs[0], outs[-1])  # deeper levels change the output

    # The training forward (no quantizer dropout in the tiny presets) picks the same codes, and its
    # straight-through output decodes to the same waveform, padded to the input's length.
    out = tiny.train(variables, wav, jnp.ones((2, FRAMES), bool), jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(out.quantizer.codes), np.asarray(codes))
    n = outs[-1].shape[1]
    np.testing.assert_allclose(np.asarray(out.wav)[:, :n], outs[-1], atol=3e-5, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(out.wav)[:, n:], 0.0)


@pytest.mark.parametrize("name", ["seanet_vocos", "dac_vocos"])
def test_tiny_vocos_conditions_on_levels(name):
    """The Vocos decoder picks AdaLN row `levels - 1`: changing that row changes the output of
    2-level codes; changing another row does not."""
    tiny = _tiny(name)
    cfg, variables = tiny.cfg, tiny.variables
    codes = tiny.encode(variables, _wav(2, FRAMES * cfg.hop_length, seed=1))[:, :2]
    base = np.asarray(tiny.decode(variables, codes))
    tables = []

    def with_row(row: int):
        rng = np.random.default_rng(row)

        def edit(path, x):
            names = [getattr(p, "key", None) for p in path]
            if (
                names[:2] == ["params", "decoder"]
                and names[-1] in ("scale", "shift")
                and x.ndim == 2
            ):
                assert x.shape[0] == cfg.num_codebooks
                tables.append(names)
                return x.at[row].set(jnp.asarray(rng.standard_normal(x.shape[1]), x.dtype))
            return x

        return np.asarray(tiny.decode(jax.tree_util.tree_map_with_path(edit, variables), codes))

    assert np.abs(with_row(1) - base).max() > 1e-3
    assert len(tables) == 2 * (1 + cfg.vocos.num_layers)  # scale and shift of every norm
    np.testing.assert_array_equal(with_row(3), base)
    np.testing.assert_array_equal(with_row(0), base)


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_train_forward_is_finite(name):
    tiny = _tiny(name)
    cfg, variables = tiny.cfg, tiny.variables
    wav = _wav(2, FRAMES * cfg.hop_length, seed=2)
    mask = jnp.ones((2, FRAMES), bool).at[1, -2:].set(False)
    out = tiny.train(variables, wav, mask, jax.random.key(3))
    assert out.wav.shape == wav.shape
    assert out.latent.shape[:2] == (2, FRAMES)
    q = out.quantizer
    recon = jnp.mean(jnp.abs(out.wav - wav))
    for value in (recon, q.commitment_loss, q.codebook_loss):
        assert np.isfinite(float(value))
    assert float(q.commitment_loss) > 0
    if cfg.quantizer.kind == "ema":
        counts = np.asarray(q.stats["counts"]).sum(-1)
        np.testing.assert_array_equal(counts, [int(mask.sum())] * cfg.num_codebooks)
    else:
        assert float(q.codebook_loss) > 0 and q.stats is None


def _conv_dtypes(fn, *args) -> list:
    """Operand dtypes of every convolution and matmul in fn's jaxpr, nested jaxprs included."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
                found.append(eqn.invars[0].aval.dtype)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.mark.parametrize("name", list(TINY))
def test_bfloat16_compute_matches_float32(name):
    """dtype=bfloat16: the encoder/decoder convolutions run in bf16 (the quantizer in float32),
    outputs come back float32, and the reconstruction and codes stay close to float32's."""
    tiny = _tiny(name)
    cfg, variables = tiny.cfg, tiny.variables
    wav = _wav(2, FRAMES * cfg.hop_length, seed=4)
    mask = jnp.ones((2, FRAMES), bool)
    outs = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = Codec(cfg, dtype)

        def forward(v, x, model=model):
            return model.apply(v, x, train=False, mask=mask)

        dtypes = _conv_dtypes(forward, variables, wav)
        if dtype == jnp.bfloat16:
            assert dtypes.count(jnp.bfloat16) > len(dtypes) // 2, dtypes
        else:
            assert set(dtypes) == {jnp.dtype(jnp.float32)}
        outs[dtype] = jax.jit(forward)(variables, wav)
    lo, hi = outs[jnp.bfloat16], outs[jnp.float32]
    assert lo.wav.dtype == lo.latent.dtype == jnp.float32
    scale = float(jnp.std(hi.wav))
    assert float(jnp.sqrt(jnp.mean((lo.wav - hi.wav) ** 2))) < 0.05 * scale
    # bf16 latents may move a code whose two nearest codewords are almost equidistant
    assert float(jnp.mean(lo.quantizer.codes == hi.quantizer.codes)) > 0.8
