"""Published Vocos-EnCodec weights (charactr/vocos-encodec-24khz) as the decoder of an nclm codec
whose encoder and quantizer come from a transformers EnCodec directory.

A Vocos model directory holds `config.yaml` (the feature extractor, backbone and head, each as a
class path with its arguments) and `pytorch_model.bin` (or safetensors). The EnCodec variant
decodes the sum of EnCodec's codebook vectors for the codes, so its file holds the backbone, the
iSTFT head and a copy of the first codebooks, but not EnCodec itself (vocos loads that from the
encodec package); `--encodec` supplies it. The copied codebooks must equal that EnCodec's, or the
decoder would be reading codes that mean other vectors. The codec keeps the levels Vocos decodes
(16 for 1.5-12 kbps) and gives each published bandwidth's level count its AdaLN row.

Layout changes (PyTorch -> nclm, channels-last):
    Conv1d weight          [C_out, C_in / groups, K] -> kernel [K, C_in / groups, C_out]
    Linear weight          [out, in]                 -> kernel [in, out]
    AdaLayerNorm scale/shift Embedding [rows, D]     -> scale/shift [rows, D]
    LayerNorm weight, bias                           -> scale, bias
Every tensor must be used (EnCodec's own weights, where a file carries them, are not read: the
encoder comes from `--encodec`), and every decoder parameter filled.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import jax
import numpy as np

from nclm.audio.stft import hann_window
from nclm.codec.checkpoint import codec_id, save_codec
from nclm.codec.config import CodecConfig, SEANetConfig, VocosConfig
from nclm.codec.convert import (
    ConversionError,
    SourceTensors,
    check_against,
    convert_transformers_dir,
    read_state_dict,
)
from nclm.codec.model import init_codec

PARTS = {
    "feature_extractor": "vocos.feature_extractors.EncodecFeatures",
    "backbone": "vocos.models.VocosBackbone",
    "head": "vocos.heads.ISTFTHead",
}
DEFAULT_BANDWIDTHS = (1.5, 3.0, 6.0, 12.0)  # EncodecFeatures' default, in kbps


def read_vocos_config(src_dir: Path) -> dict[str, dict]:
    """config.yaml -> the init arguments of the feature extractor, backbone and head."""
    config_file = src_dir / "config.yaml"
    if not config_file.is_file():
        raise ConversionError(f"{src_dir}: not a Vocos model directory (no config.yaml)")
    import yaml

    config = yaml.safe_load(config_file.read_text()) or {}
    if "feature_extractor" not in config and "model" in config:  # a training config
        config = config["model"].get("init_args", {})
    for part, class_path in PARTS.items():
        got = (config.get(part) or {}).get("class_path")
        if got != class_path:
            why = (
                " (the mel-spectrogram Vocos is a vocoder: it has no codes to decode)"
                if part == "feature_extractor" and got and "Mel" in got
                else ""
            )
            raise ConversionError(
                f"{config_file}: {part} is {got!r}; only {class_path} converts{why}"
            )
    return {part: dict(config[part].get("init_args") or {}) for part in PARTS}


def bandwidth_levels(cfg: CodecConfig, bandwidths) -> tuple[int, ...]:
    """EnCodec's level count for each bandwidth in kbps: floor(bits/s / (frame rate x bits per
    code)), at least 1 (as the encodec package and transformers count them)."""
    frame_rate = math.ceil(cfg.sample_rate / cfg.hop_length)
    bits = math.log2(cfg.codebook_size)
    return tuple(max(1, int(1000 * b // (frame_rate * bits))) for b in bandwidths)


def vocos_levels(parts: dict[str, dict], encodec: CodecConfig) -> tuple[int, ...]:
    """The level counts of the bandwidths this Vocos was trained on."""
    return bandwidth_levels(
        encodec, parts["feature_extractor"].get("bandwidths", DEFAULT_BANDWIDTHS)
    )


def vocos_config(parts: dict[str, dict], encodec: CodecConfig, origin: str) -> VocosConfig:
    backbone, head = parts["backbone"], parts["head"]
    rows = backbone.get("adanorm_num_embeddings")
    levels = vocos_levels(parts, encodec)
    checks = [
        ("backbone.input_channels", backbone.get("input_channels"), encodec.network.latent_dim),
        ("head.hop_length", head.get("hop_length"), encodec.hop_length),
        ("head.padding", head.get("padding", "same"), "same"),
        ("head.dim", head.get("dim"), backbone.get("dim")),
    ]
    if rows is not None:
        checks.append(("backbone.adanorm_num_embeddings", rows, len(levels)))
    for name, got, expected in checks:
        if got != expected:
            raise ConversionError(
                f"{origin}: {name} is {got!r}; the EnCodec given needs {expected!r}"
            )
    if max(levels) > encodec.num_codebooks:
        raise ConversionError(
            f"{origin}: bandwidths {parts['feature_extractor'].get('bandwidths')} need "
            f"{max(levels)} levels; the EnCodec given has {encodec.num_codebooks}"
        )
    try:
        return VocosConfig(
            dim=backbone["dim"],
            hidden=backbone["intermediate_dim"],
            num_layers=backbone["num_layers"],
            n_fft=head["n_fft"],
            condition_on_levels=rows is not None,
            condition_levels=levels if rows is not None else (),
        )
    except KeyError as e:
        raise ConversionError(f"{origin}: config.yaml lacks {e}") from None


def vocos_decoder_variables(src: SourceTensors, cfg: VocosConfig) -> dict:
    """The backbone and head tensors -> nclm VocosDecoder parameters."""

    def conv1d(prefix: str) -> dict:
        return {
            "kernel": src.take(f"{prefix}.weight").transpose(2, 1, 0),
            "bias": src.take(f"{prefix}.bias"),
        }

    def linear(prefix: str) -> dict:
        return {"kernel": src.take(f"{prefix}.weight").T, "bias": src.take(f"{prefix}.bias")}

    def norm(prefix: str, adaptive: bool) -> dict:
        if adaptive:
            return {
                "scale": src.take(f"{prefix}.scale.weight"),
                "shift": src.take(f"{prefix}.shift.weight"),
            }
        return {"scale": src.take(f"{prefix}.weight"), "bias": src.take(f"{prefix}.bias")}

    adaptive = cfg.condition_on_levels
    params = {"embed": conv1d("backbone.embed"), "norm": norm("backbone.norm", adaptive)}
    for i in range(cfg.num_layers):
        block = f"backbone.convnext.{i}"
        params[f"block_{i}"] = {
            "dwconv": conv1d(f"{block}.dwconv"),
            "norm": norm(f"{block}.norm", adaptive),
            "pwconv1": linear(f"{block}.pwconv1"),
            "pwconv2": linear(f"{block}.pwconv2"),
            "gamma": src.take(f"{block}.gamma"),
        }
    params["final_norm"] = norm("backbone.final_layer_norm", False)
    params["head"] = linear("head.out")
    window = src.take("head.istft.window")
    if window.shape != (cfg.n_fft,) or not np.allclose(window, hann_window(cfg.n_fft), atol=1e-6):
        raise ConversionError(
            f"{src.origin}: head.istft.window is not a periodic Hann window of {cfg.n_fft} "
            "samples (nclm's iSTFT head uses that window)"
        )
    return params


def vocos_codec_config(parts: dict[str, dict], encodec: CodecConfig, origin: str) -> CodecConfig:
    """The codec of EnCodec `encodec` decoded by the Vocos of `parts` (config.yaml's init args):
    the levels Vocos decodes, its decoder config."""
    vocos = vocos_config(parts, encodec, origin)
    levels = max(vocos_levels(parts, encodec))
    return dataclasses.replace(
        encodec,
        name=f"{encodec.name}_vocos",
        quantizer=dataclasses.replace(encodec.quantizer, num_codebooks=levels),
        decoder="vocos",
        vocos=vocos,
    )


def convert_vocos_dir(
    vocos_dir: str | os.PathLike, encodec_dir: str | os.PathLike
) -> tuple[CodecConfig, dict]:
    """A Vocos-EnCodec directory and a transformers EnCodec directory -> (CodecConfig, variables)
    of one codec: EnCodec's encoder and quantizer, Vocos's decoder."""
    cfg, variables, _ = _convert(Path(vocos_dir), Path(encodec_dir))
    return cfg, variables


def _convert(vocos_dir: Path, encodec_dir: Path) -> tuple[CodecConfig, dict, str]:
    """(config, variables, the codec id of the EnCodec alone)."""
    parts = read_vocos_config(vocos_dir)
    encodec, encodec_vars = convert_transformers_dir(encodec_dir)
    if not isinstance(encodec.network, SEANetConfig) or encodec.quantizer.kind != "ema":
        raise ConversionError(f"{encodec_dir}: --encodec must be a transformers EnCodec directory")
    cfg = vocos_codec_config(parts, encodec, str(vocos_dir / "config.yaml"))
    levels = cfg.num_codebooks

    src = SourceTensors(read_state_dict(vocos_dir), str(vocos_dir))
    decoder = vocos_decoder_variables(src, cfg.vocos)
    codebooks = {k: v[:levels] for k, v in encodec_vars["codebooks"]["quantizer"].items()}
    copied = src.take("feature_extractor.codebook_weights")
    expected = codebooks["embed"].reshape(-1, codebooks["embed"].shape[-1])
    if copied.shape != expected.shape:
        raise ConversionError(
            f"{vocos_dir}: feature_extractor.codebook_weights has shape {copied.shape}; "
            f"{levels} levels of {encodec_dir}'s codebooks are {expected.shape}"
        )
    worst = float(np.max(np.abs(copied - expected)))
    if worst > 1e-6:
        raise ConversionError(
            f"{vocos_dir}: feature_extractor.codebook_weights differ from {encodec_dir}'s "
            f"codebooks by up to {worst:.3g}: this Vocos was trained on another EnCodec's codes"
        )
    src.used.update(k for k in src.state if k.startswith("feature_extractor.encodec."))
    src.check_all_used()

    variables = {
        "params": {"encoder": encodec_vars["params"]["encoder"], "decoder": decoder},
        "codebooks": {"quantizer": codebooks},
    }
    variables = jax.tree_util.tree_map(np.asarray, variables)
    reference = jax.eval_shape(lambda: init_codec(cfg, jax.random.PRNGKey(0)))
    check_against(reference, variables, str(vocos_dir))
    return cfg, variables, codec_id(encodec, encodec_vars)


def convert_vocos(
    vocos_dir: str | os.PathLike, encodec_dir: str | os.PathLike, out_dir: str | os.PathLike
) -> str:
    """Converts and saves; returns the new codec id. The checkpoint records as `codes_of` the id
    `nclm codec convert --from transformers` gives the EnCodec: the codes are that codec's (same
    encoder and codebooks), so its codes files and the LMs trained on its tokens decode here."""
    cfg, variables, codes_of = _convert(Path(vocos_dir), Path(encodec_dir))
    sources = {
        "vocos": str(Path(vocos_dir).absolute()),
        "encodec": str(Path(encodec_dir).absolute()),
    }
    return save_codec(
        out_dir, cfg, variables, extra={"converted_from": sources, "codes_of": codes_of}
    )
