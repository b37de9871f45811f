"""Vocos-EnCodec parity: the published Vocos (the `vocos` package's backbone and iSTFT head, at
the published vocos-encodec-24khz sizes) decoding transformers EnCodec's codes, against the codec
`nclm codec convert --from vocos` writes, on the same random weights: every published bandwidth,
alone and batched with padding, as `nclm codec decode` and token pipelines call it."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from nclm.bench.vocos_reference import (
    BANDWIDTHS,
    config_yaml,
    random_vocos,
    reference_decode,
    vocos_state,
    write_vocos_dir,
)
from nclm.cli import main as nclm_main
from nclm.codec.config import VocosConfig
from nclm.codec.convert import ConversionError
from nclm.codec.convert_vocos import convert_vocos_dir
from nclm.codec.interface import NeuralCodec
from nclm.codec.vocos import condition_row
from tests.codec.reference_encodec import random_encodec, speech_like
from tests.conftest import optional

pytestmark = pytest.mark.needs("torch", "transformers", "vocos")
torch = optional("torch")

LEVELS = [2, 4, 8, 16]  # of the published bandwidths (75 Hz, 10 bits a code)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """(encodec, backbone, head, encodec_dir, vocos_dir, state): both models as published code
    builds them, and the directories `nclm codec convert` reads."""
    encodec = random_encodec()
    encodec_dir = tmp_path_factory.mktemp("encodec_hf")
    encodec.save_pretrained(encodec_dir)
    backbone, head = random_vocos(torch)
    state = vocos_state(backbone, head, encodec)
    vocos_dir = tmp_path_factory.mktemp("vocos") / "vocos_encodec_24khz"
    write_vocos_dir(vocos_dir, state, config_yaml())
    return encodec, backbone, head, encodec_dir, vocos_dir, state


def _reference_decode(published, codes: np.ndarray, bandwidth_id: int) -> np.ndarray:
    encodec, backbone, head = published[:3]
    wav = reference_decode(torch, encodec, backbone, head, torch.from_numpy(codes), bandwidth_id)
    return wav.numpy()


def test_vocos_user_path_parity(published, tmp_path):
    """`nclm codec convert --from vocos`, then NeuralCodec as `nclm codec encode|decode` call it:
    EnCodec's codes at every published bandwidth, and Vocos's audio for them, alone and with
    clips of other lengths in one padded batch (each row decoded as if alone)."""
    encodec, _, _, encodec_dir, vocos_dir, _ = published
    out = tmp_path / "codec"
    nclm_main(["codec", "convert", "--from", "vocos", str(vocos_dir), "--encodec", str(encodec_dir),
               "--out", str(out)])  # fmt: skip
    codec = NeuralCodec.load(out, bucket_frames=8)
    assert codec.codec_id.startswith("encodec_24khz_vocos-")
    # it reads the codes of the EnCodec converted alone (codes files, LMs trained on its tokens)
    nclm_main(["codec", "convert", "--from", "transformers", str(encodec_dir),
               "--out", str(tmp_path / "encodec")])  # fmt: skip
    encodec_id = json.loads((tmp_path / "encodec" / "codec.json").read_text())["codec_id"]
    assert json.loads((out / "codec.json").read_text())["codes_of"] == encodec_id
    assert codec.num_codebooks == 16 and codec.bitrate() == 12000
    hop = codec.hop_length
    lengths = [5 * hop + 77, 8 * hop, 3 * 8 * hop + 123]  # shorter than, one, over a bucket
    clips = [speech_like(1, n, seed=n)[0] for n in lengths]
    refs = {}
    for bandwidth_id, (bandwidth, levels) in enumerate(zip(BANDWIDTHS, LEVELS)):
        x = clips[-1][None]
        with torch.no_grad():
            ref_codes = encodec.encode(torch.from_numpy(x)[:, None], bandwidth=bandwidth)
        ref_codes = ref_codes.audio_codes[0].numpy()
        codes, frames = codec.encode(x, num_levels=levels)
        np.testing.assert_array_equal(codes, ref_codes, err_msg=f"{levels} levels")
        ref_wav = _reference_decode(published, ref_codes, bandwidth_id)[0]
        wav, samples = codec.decode(ref_codes)
        assert samples[0] == len(ref_wav) == frames[0] * hop
        assert np.abs(ref_wav).max() > 1e-2  # a real signal is compared
        np.testing.assert_allclose(wav[0], ref_wav, atol=1e-6, rtol=0, err_msg=f"{levels} levels")
        refs[levels] = ref_wav
    # the rows differ, so the comparisons above tell the bandwidths apart
    assert np.abs(refs[8] - refs[16]).max() > 1e-3

    # one padded batch at 6 kbps: every row equals that clip decoded alone by the reference
    codes = [codec.encode(c[None], num_levels=8)[0][0] for c in clips]
    padded = np.zeros((len(codes), 8, max(c.shape[-1] for c in codes)), np.int32)
    for i, c in enumerate(codes):
        padded[i, :, : c.shape[-1]] = c
    wav, samples = codec.decode(padded, np.array([c.shape[-1] for c in codes]))
    for i, c in enumerate(codes):
        ref_wav = _reference_decode(published, c[None], LEVELS.index(8))[0]
        assert samples[i] == len(ref_wav)
        np.testing.assert_allclose(wav[i, : len(ref_wav)], ref_wav, atol=1e-6, rtol=0)

    # `nclm codec decode` of the EnCodec's codes file (6 kbps) with the Vocos codec
    sf.write(tmp_path / "clip.wav", clips[0], 24000, subtype="FLOAT")
    nclm_main(["codec", "encode", "--codec", str(tmp_path / "encodec"), str(tmp_path / "clip.wav"),
               str(tmp_path / "codes.npz"), "--levels", "8"])  # fmt: skip
    nclm_main(["codec", "decode", "--codec", str(out), str(tmp_path / "codes.npz"),
               str(tmp_path / "vocos.wav")])  # fmt: skip
    decoded, rate = sf.read(tmp_path / "vocos.wav", dtype="float32")
    ref_wav = _reference_decode(published, codes[0][None], LEVELS.index(8))[0]
    assert rate == 24000 and len(decoded) == len(clips[0])
    np.testing.assert_allclose(decoded, ref_wav[: len(decoded)], atol=1 / 32768 + 1e-6, rtol=0)


def test_unlisted_level_counts(published, tmp_path):
    """Codes of a level count Vocos was not trained on are refused by name, not decoded with some
    row; traced counts (training's random levels) take the row of the listed count below."""
    encodec_dir, vocos_dir = published[3:5]
    cfg, variables = convert_vocos_dir(vocos_dir, encodec_dir)
    assert cfg.vocos.condition_levels == (2, 4, 8, 16)
    with pytest.raises(ValueError, match=r"decodes codes of 2, 4, 8, 16 levels .* got 3"):
        condition_row(cfg.vocos, 3)
    with pytest.raises(ValueError, match="got 5"):
        condition_row(cfg.vocos, np.int64(5))
    used = jnp.array([1, 2, 3, 5, 8, 15, 16])
    assert condition_row(cfg.vocos, used).tolist() == [0, 0, 0, 1, 2, 2, 3]
    every_count = VocosConfig()  # no list: a row per count
    with pytest.raises(ValueError, match=r"condition_levels must be ascending .* got \(4, 2\)"):
        dataclasses.replace(cfg, vocos=dataclasses.replace(cfg.vocos, condition_levels=(4, 2)))
    with pytest.raises(ValueError, match=r"in 1..16 .* got \(2, 32\)"):
        dataclasses.replace(cfg, vocos=dataclasses.replace(cfg.vocos, condition_levels=(2, 32)))
    assert condition_row(every_count, used).tolist() == [0, 1, 2, 4, 7, 14, 15]

    codec = NeuralCodec.load(_saved(tmp_path, vocos_dir, encodec_dir), bucket_frames=8)
    codes = np.zeros((1, 3, 10), np.int32)
    with pytest.raises(ValueError, match="got 3"):
        codec.decode(codes)


def _saved(tmp_path, vocos_dir, encodec_dir):
    from nclm.codec.convert_vocos import convert_vocos

    convert_vocos(vocos_dir, encodec_dir, tmp_path / "codec")
    return tmp_path / "codec"


def test_conversion_errors(published, tmp_path):
    encodec_dir, vocos_dir, state = published[3:]
    config = config_yaml()

    other = {**state, "feature_extractor.codebook_weights": state[
        "feature_extractor.codebook_weights"] + 1e-3}  # fmt: skip
    write_vocos_dir(tmp_path / "other_books", other, config)
    with pytest.raises(ConversionError, match="trained on another EnCodec's codes"):
        convert_vocos_dir(tmp_path / "other_books", encodec_dir)

    missing = {k: v for k, v in state.items() if k != "backbone.convnext.3.pwconv1.bias"}
    write_vocos_dir(tmp_path / "missing", missing, config)
    with pytest.raises(ConversionError, match="backbone.convnext.3.pwconv1.bias"):
        convert_vocos_dir(tmp_path / "missing", encodec_dir)

    mel = {**config, "feature_extractor": {
        "class_path": "vocos.feature_extractors.MelSpectrogramFeatures"}}  # fmt: skip
    write_vocos_dir(tmp_path / "mel", state, mel)
    with pytest.raises(ConversionError, match="vocoder: it has no codes"):
        convert_vocos_dir(tmp_path / "mel", encodec_dir)

    hop = {**config, "head": {**config["head"], "init_args": {
        **config["head"]["init_args"], "hop_length": 256}}}  # fmt: skip
    write_vocos_dir(tmp_path / "hop", state, hop)
    with pytest.raises(
        ConversionError, match="head.hop_length is 256; the EnCodec given needs 320"
    ):
        convert_vocos_dir(tmp_path / "hop", encodec_dir)

    with pytest.raises(SystemExit) as e:  # the CLI names the missing option
        nclm_main(["codec", "convert", "--from", "vocos", str(vocos_dir), "--out",
                   str(tmp_path / "x")])  # fmt: skip
    assert e.value.code == 2
