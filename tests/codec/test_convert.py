"""Parity with the transformers EnCodec and DAC implementations on the same (random) weights.

The reference models are built from their default configs (EnCodec 24 kHz with 32 levels; DAC with
9 levels, hop 512), saved with save_pretrained, converted, and compared: codes identical and decoded
audio within 1e-4, for lengths on and off the hop grid.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nclm.codec.convert import ConversionError, convert_transformers, convert_transformers_dir
from nclm.codec.interface import NeuralCodec
from nclm.codec.model import Codec
from tests.codec.reference_encodec import random_encodec, speech_like
from tests.conftest import optional

# Every test here compares with (or converts from) the transformers models.
pytestmark = pytest.mark.needs("torch", "transformers")
torch, transformers = optional("torch"), optional("transformers")


@pytest.fixture(scope="module")
def encodec_dir(tmp_path_factory):
    model = random_encodec()
    path = tmp_path_factory.mktemp("encodec_hf")
    model.save_pretrained(path)
    return model, path


def _weight_normed_dac():
    torch.manual_seed(1)
    model = transformers.DacModel(transformers.DacConfig()).eval()
    model.apply_weight_norm()
    with torch.no_grad():  # different magnitudes per channel, so weight norm's g matters
        for name, p in model.named_parameters():
            if name.endswith("original0"):
                p.mul_(torch.rand_like(p) + 0.5)
    return model


@pytest.fixture(scope="module", params=["folded", "weight_norm"])
def dac_dir(request, tmp_path_factory):
    if request.param == "folded":  # as the published descript/dac_* files store it
        torch.manual_seed(1)
        model = transformers.DacModel(transformers.DacConfig()).eval()
    else:
        model = _weight_normed_dac()
    path = tmp_path_factory.mktemp(f"dac_hf_{request.param}")
    model.save_pretrained(path)
    return model, path


def _jitted(cfg):
    model = Codec(cfg)
    encode = jax.jit(lambda v, x: model.apply(v, x, method="encode"))
    decode = jax.jit(lambda v, c: model.apply(v, c, method="decode"))
    return encode, decode


@pytest.mark.parametrize(
    "length",
    [
        24000,
        24000 + 123,
        999,
    ],
)
def test_encodec_parity(encodec_dir, length):
    hf, path = encodec_dir
    cfg, variables = convert_transformers_dir(path)
    assert (cfg.sample_rate, cfg.hop_length, cfg.num_codebooks) == (24000, 320, 32)
    encode, decode = _jitted(cfg)
    x = speech_like(2, length, seed=length)
    with torch.no_grad():
        ref_codes = hf.encode(torch.from_numpy(x)[:, None], bandwidth=24.0).audio_codes[0].numpy()
        ref_wav = hf.decode(torch.from_numpy(ref_codes)[None], [None]).audio_values[:, 0].numpy()
    codes = np.asarray(encode(variables, jnp.asarray(x)))
    # The first 4 levels exactly. Deeper, the noise codebooks meet an ever smaller residual and
    # hold float near-ties (3 entries at levels 26-32 of the 24000-sample clip with torch 2.13,
    # transformers 5.24), so all 32 must agree on 99 % of entries; a conv or padding bug
    # changes level 1 too.
    np.testing.assert_array_equal(codes[:, :4], ref_codes[:, :4])
    assert np.mean(codes == ref_codes) > 0.99
    assert len(np.unique(codes[:, 0])) > 1  # the comparison is not between constant codes
    wav = np.asarray(decode(variables, jnp.asarray(ref_codes)))
    assert wav.shape == ref_wav.shape
    np.testing.assert_allclose(wav, ref_wav, atol=1e-4, rtol=0)


@pytest.mark.parametrize("length", [16384, 16000 + 123])
def test_dac_parity(dac_dir, length):
    hf, path = dac_dir
    cfg, variables = convert_transformers_dir(path)
    assert (cfg.sample_rate, cfg.hop_length, cfg.num_codebooks) == (16000, 512, 9)
    encode, decode = _jitted(cfg)
    x = speech_like(2, length, seed=length)
    with torch.no_grad():
        ref_codes = hf.encode(torch.from_numpy(x)[:, None]).audio_codes.numpy()
        ref_wav = hf.decode(audio_codes=torch.from_numpy(ref_codes)).audio_values.numpy()
    codes = np.asarray(encode(variables, jnp.asarray(x)))
    np.testing.assert_array_equal(codes, ref_codes)
    assert len(np.unique(codes[:, 0])) > 1
    wav = np.asarray(decode(variables, jnp.asarray(ref_codes)))
    assert wav.shape == ref_wav.shape
    np.testing.assert_allclose(wav, ref_wav, atol=1e-4, rtol=0)


def test_saved_checkpoint_round_trip(encodec_dir, tmp_path):
    """convert -> save -> NeuralCodec.load gives the same codes as the reference model."""
    hf, path = encodec_dir
    cid = convert_transformers(path, tmp_path / "codec")
    codec = NeuralCodec.load(tmp_path / "codec", bucket_frames=1)
    assert codec.codec_id == cid and cid.startswith("encodec_24khz-")
    assert codec.bitrate() == 24000 and codec.bitrate(8) == 6000
    x = speech_like(1, 320 * 40, seed=7)
    with torch.no_grad():
        ref = hf.encode(torch.from_numpy(x)[:, None], bandwidth=6.0).audio_codes[0].numpy()
    codes, frames = codec.encode(x, num_levels=8)
    np.testing.assert_array_equal(codes, ref)
    assert frames.tolist() == [40]


def _hf_codes(name, hf, x):
    with torch.no_grad():
        if name == "encodec":  # 8 levels (6 kbps, VALL-E's setting): the 32nd level's random
            # codebooks have near-ties that flip with float summation order, padding or not
            return hf.encode(torch.from_numpy(x)[:, None], bandwidth=6.0).audio_codes[0].numpy()
        hop = hf.config.hop_length  # DAC's preprocessing: zero-pad to a whole number of hops
        x = np.pad(x, ((0, 0), (0, -x.shape[1] % hop)))
        return hf.encode(torch.from_numpy(x)[:, None]).audio_codes.numpy()


def _hf_decode(name, hf, codes):
    with torch.no_grad():
        if name == "encodec":
            return hf.decode(torch.from_numpy(codes)[None], [None]).audio_values[:, 0].numpy()
        return hf.decode(audio_codes=torch.from_numpy(codes)).audio_values.numpy()


def test_encodec_user_path_parity(encodec_dir, tmp_path):
    _check_user_path("encodec", *encodec_dir, tmp_path)


def test_dac_user_path_parity(dac_dir, tmp_path):
    _check_user_path("dac", *dac_dir, tmp_path)


def _check_user_path(name, hf, path, tmp_path):
    """Through NeuralCodec (what `nclm codec encode|decode`, token extraction and evaluation call),
    each clip gives the reference's codes and audio whatever bucket or batch it lands in: clips
    shorter than, equal to and longer than a bucket, alone and batched with a longer clip. The
    bucket's padding must never reach a clip's valid frames (the convolutions' reflect or zero
    padding at each clip's own end is reproduced per row)."""
    cid = convert_transformers(path, tmp_path / "codec")
    bucket = 8  # frames
    codec = NeuralCodec.load(tmp_path / "codec", bucket_frames=bucket)
    assert codec.codec_id == cid
    hop = codec.hop_length
    lengths = [5 * hop + 77, bucket * hop, 3 * bucket * hop + 123]  # <, =, > one bucket
    clips = [speech_like(1, n, seed=n)[0] for n in lengths]
    batch = np.zeros((len(clips), max(lengths)), np.float32)
    for i, clip in enumerate(clips):
        batch[i, : len(clip)] = clip
    levels = 8 if name == "encodec" else None
    batched_codes, batched_frames = codec.encode(batch, np.array(lengths), levels)
    refs = [_hf_codes(name, hf, clip[None])[0] for clip in clips]
    for i, (clip, ref) in enumerate(zip(clips, refs)):
        alone, frames = codec.encode(clip[None], num_levels=levels)
        assert frames[0] == batched_frames[i] == ref.shape[-1]
        np.testing.assert_array_equal(alone[0], ref, err_msg=f"clip {i} alone")
        np.testing.assert_array_equal(
            batched_codes[i, :, : ref.shape[-1]], ref, err_msg=f"clip {i} batched"
        )
    # Decoding the reference's own codes, alone and batched (each row its own frame count).
    padded = np.zeros((len(refs), refs[0].shape[0], max(r.shape[-1] for r in refs)), np.int32)
    for i, ref in enumerate(refs):
        padded[i, :, : ref.shape[-1]] = ref
    batched_wav, samples = codec.decode(padded, np.array([r.shape[-1] for r in refs]))
    for i, ref in enumerate(refs):
        ref_wav = _hf_decode(name, hf, ref[None])[0]
        n = min(len(ref_wav), samples[i])
        alone, _ = codec.decode(ref[None])
        assert np.abs(ref_wav).max() > 1e-3  # a real signal is compared
        np.testing.assert_allclose(alone[0, :n], ref_wav[:n], atol=1e-4, rtol=0)
        np.testing.assert_allclose(batched_wav[i, :n], ref_wav[:n], atol=1e-4, rtol=0)


def _edit_safetensors(src, dst, edit):
    from safetensors.numpy import load_file, save_file

    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    state = load_file(src / "model.safetensors")
    edit(state)
    save_file(state, dst / "model.safetensors")


def test_conversion_errors_name_the_tensor(encodec_dir, tmp_path):
    _, path = encodec_dir
    key = "encoder.layers.0.conv.bias"

    def drop(state):
        del state[key]

    _edit_safetensors(path, tmp_path / "missing", drop)
    with pytest.raises(ConversionError, match="encoder.layers.0.conv.bias"):
        convert_transformers_dir(tmp_path / "missing")

    def extra(state):
        state["encoder.layers.99.conv.bias"] = np.zeros(3, np.float32)

    _edit_safetensors(path, tmp_path / "extra", extra)
    with pytest.raises(ConversionError, match="unexpected tensors.*layers.99"):
        convert_transformers_dir(tmp_path / "extra")

    def reshape(state):
        state[key] = np.zeros(7, np.float32)

    _edit_safetensors(path, tmp_path / "shape", reshape)
    with pytest.raises(ConversionError, match=r"stem.*expects shape \(32,\), converted \(7,\)"):
        convert_transformers_dir(tmp_path / "shape")


def test_conversion_rejects_other_models(tmp_path):
    with pytest.raises(ConversionError, match="no config.json"):
        convert_transformers_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConversionError, match="model_type 'bert' is not supported"):
        convert_transformers_dir(tmp_path)
