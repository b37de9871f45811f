"""Published weights: convert a `transformers` EnCodec or DAC model directory into an nclm codec.

A model directory is what `save_pretrained` writes (and what the hub's facebook/encodec_* and
descript/dac_* repos hold): `config.json` plus `model.safetensors` (or `pytorch_model.bin`).

Layout changes (PyTorch -> nclm, channels-last):
    Conv1d weight           [C_out, C_in, K]   -> kernel / weight_v  [K, C_in, C_out]
    ConvTranspose1d weight  [C_in, C_out, K]   -> weight_v           [K, C_in, C_out]
    weight norm g           [C, 1, 1]          -> weight_g           [C]
    LSTM weight_ih/hh       [4H, D]            -> w_ih/w_hh          [D, 4H];  bias = b_ih + b_hh
    Snake alpha             [1, C, 1]          -> alpha              [C]
Weight norm may be stored as `weight_g`/`weight_v`, as `parametrizations.weight.original0/1`, or
already folded into `weight` (DAC's published files); all three are accepted. Every tensor of the
source must be used and every nclm parameter filled, else the error names the tensor.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jax
import numpy as np

from nclm.codec.checkpoint import save_codec
from nclm.codec.config import CodecConfig, DACNetConfig, QuantizerConfig, SEANetConfig
from nclm.codec.model import init_codec


class ConversionError(ValueError):
    """A source checkpoint that does not fit the nclm model; the message names the tensor."""


# -- reading ----------------------------------------------------------------------------------


def read_state_dict(src: Path) -> dict[str, np.ndarray]:
    files = sorted(src.glob("*.safetensors"))
    if files:
        from safetensors.numpy import load_file

        state = {}
        for f in files:
            state.update(load_file(f))
        return {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in state.items()}
    bin_file = src / "pytorch_model.bin"
    if bin_file.is_file():
        try:
            import torch
        except ImportError:
            raise ConversionError(
                f"{bin_file}: reading .bin weights needs torch; "
                "install nclm[parity] or convert to safetensors"
            ) from None
        state = torch.load(bin_file, map_location="cpu", weights_only=True)
        return {
            k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()
        }
    raise ConversionError(f"{src}: no model.safetensors or pytorch_model.bin")


class SourceTensors:
    """The source state dict, tracking which tensors were used."""

    def __init__(self, state: dict[str, np.ndarray], origin: str):
        self.state, self.origin, self.used = state, origin, set()

    def take(self, key: str) -> np.ndarray:
        if key not in self.state:
            raise ConversionError(f"{self.origin}: missing tensor {key!r}")
        self.used.add(key)
        return self.state[key]

    def has(self, key: str) -> bool:
        return key in self.state

    def mark_buffers(self, suffixes: tuple[str, ...]) -> None:
        """Marks tensors that carry no weights for inference (EMA statistics, flags)."""
        self.used.update(k for k in self.state if k.endswith(suffixes))

    def check_all_used(self) -> None:
        unused = sorted(set(self.state) - self.used)
        if unused:
            raise ConversionError(
                f"{self.origin}: unexpected tensors {unused[:5]}"
                + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
            )


def _weight_norm_parts(src: SourceTensors, prefix: str, norm_dims: tuple[int, ...]):
    """(v, g) in PyTorch layout from any of the three storage forms; g is flattened."""
    if src.has(f"{prefix}.parametrizations.weight.original1"):
        v = src.take(f"{prefix}.parametrizations.weight.original1")
        g = src.take(f"{prefix}.parametrizations.weight.original0")
    elif src.has(f"{prefix}.weight_v"):
        v, g = src.take(f"{prefix}.weight_v"), src.take(f"{prefix}.weight_g")
    else:
        v = src.take(f"{prefix}.weight")
        g = np.sqrt(np.sum(np.square(v, dtype=np.float64), axis=norm_dims)).astype(np.float32)
    return v, g.reshape(-1)


def conv(src: SourceTensors, prefix: str) -> dict:
    """torch Conv1d (weight-normed or not) -> nclm Conv1d params with weight norm."""
    v, g = _weight_norm_parts(src, prefix, (1, 2))
    return {"weight_v": v.transpose(2, 1, 0), "weight_g": g, "bias": src.take(f"{prefix}.bias")}


def conv_transpose(src: SourceTensors, prefix: str) -> dict:
    v, g = _weight_norm_parts(src, prefix, (1, 2))  # torch normalises per input channel (dim 0)
    return {"weight_v": v.transpose(2, 0, 1), "weight_g": g, "bias": src.take(f"{prefix}.bias")}


def lstm(src: SourceTensors, prefix: str, num_layers: int) -> dict:
    return {
        f"layer_{k}": {
            "w_ih": src.take(f"{prefix}.weight_ih_l{k}").T,
            "w_hh": src.take(f"{prefix}.weight_hh_l{k}").T,
            "bias": src.take(f"{prefix}.bias_ih_l{k}") + src.take(f"{prefix}.bias_hh_l{k}"),
        }
        for k in range(num_layers)
    }


def snake(src: SourceTensors, prefix: str) -> dict:
    return {"alpha": src.take(f"{prefix}.alpha").reshape(-1)}


# -- EnCodec ----------------------------------------------------------------------------------


def encodec_config(hf: dict, name: str) -> CodecConfig:
    if hf.get("norm_type", "weight_norm") != "weight_norm":
        raise ConversionError(
            f"EnCodec norm_type {hf['norm_type']!r} (the 48 kHz model) is not "
            "supported yet; only weight_norm models (24 kHz, 32 kHz) convert"
        )
    if hf.get("audio_channels", 1) != 1 or hf.get("normalize") or hf.get("chunk_length_s"):
        raise ConversionError(
            "only mono EnCodec models without chunking/normalisation convert "
            "(stereo 48 kHz is not supported yet)"
        )
    hop = math.prod(hf["upsampling_ratios"])
    frame_rate = math.ceil(hf["sampling_rate"] / hop)
    bits = math.log2(hf["codebook_size"])
    num_q = int(1000 * hf["target_bandwidths"][-1] // (frame_rate * bits))
    net = SEANetConfig(
        channels=hf["num_filters"],
        strides=tuple(reversed(hf["upsampling_ratios"])),
        latent_dim=hf["hidden_size"],
        kernel_size=hf["kernel_size"],
        last_kernel_size=hf["last_kernel_size"],
        residual_kernel_size=hf["residual_kernel_size"],
        num_residual_layers=hf["num_residual_layers"],
        dilation_base=hf["dilation_growth_rate"],
        compress=hf["compress"],
        lstm_layers=hf["num_lstm_layers"],
        causal=hf["use_causal_conv"],
        pad_mode=hf["pad_mode"],
        conv_shortcut=hf["use_conv_shortcut"],
    )
    quant = QuantizerConfig(
        "ema", num_q, hf["codebook_size"], hf.get("codebook_dim") or hf["hidden_size"]
    )
    return CodecConfig(name, hf["sampling_rate"], net, quant)


def _seanet_resblock(src: SourceTensors, prefix: str, shortcut: bool) -> dict:
    out = {
        "conv_0": conv(src, f"{prefix}.block.1.conv"),
        "conv_1": conv(src, f"{prefix}.block.3.conv"),
    }
    if shortcut:
        out["shortcut"] = conv(src, f"{prefix}.shortcut.conv")
    return out


def encodec_variables(src: SourceTensors, cfg: CodecConfig) -> dict:
    """Walks the transformers EnCodec module lists in the order they are built."""
    net: SEANetConfig = cfg.network
    enc, i = {"stem": conv(src, "encoder.layers.0.conv")}, 1
    for b in range(len(net.strides)):
        for j in range(net.num_residual_layers):
            enc[f"block_{b}_res_{j}"] = _seanet_resblock(
                src, f"encoder.layers.{i}", net.conv_shortcut
            )
            i += 1
        enc[f"block_{b}_down"] = conv(src, f"encoder.layers.{i + 1}.conv")  # i is the ELU
        i += 2
    if net.lstm_layers:
        enc["lstm"] = lstm(src, f"encoder.layers.{i}.lstm", net.lstm_layers)
        i += 1
    enc["head"] = conv(src, f"encoder.layers.{i + 1}.conv")

    dec, i = {"stem": conv(src, "decoder.layers.0.conv")}, 1
    if net.lstm_layers:
        dec["lstm"] = lstm(src, f"decoder.layers.{i}.lstm", net.lstm_layers)
        i += 1
    for b in range(len(net.strides)):
        dec[f"block_{b}_up"] = conv_transpose(src, f"decoder.layers.{i + 1}.conv")
        i += 2
        for j in range(net.num_residual_layers):
            dec[f"block_{b}_res_{j}"] = _seanet_resblock(
                src, f"decoder.layers.{i}", net.conv_shortcut
            )
            i += 1
    dec["head"] = conv(src, f"decoder.layers.{i + 1}.conv")

    embed = np.stack(
        [src.take(f"quantizer.layers.{q}.codebook.embed") for q in range(cfg.num_codebooks)]
    )
    cluster = np.stack(
        [src.take(f"quantizer.layers.{q}.codebook.cluster_size") for q in range(cfg.num_codebooks)]
    )
    src.mark_buffers(("codebook.inited", "codebook.embed_avg"))
    # Continue EMA training from the published codebooks: m = e * N keeps e = m / N.
    cluster = np.maximum(cluster, cfg.quantizer.dead_code_threshold)
    codebooks = {"embed": embed, "cluster_size": cluster, "embed_sum": embed * cluster[..., None]}
    return {"params": {"encoder": enc, "decoder": dec}, "codebooks": {"quantizer": codebooks}}


# -- DAC --------------------------------------------------------------------------------------


def dac_config(hf: dict, name: str) -> CodecConfig:
    net = DACNetConfig(
        encoder_channels=hf["encoder_hidden_size"],
        decoder_channels=hf["decoder_hidden_size"],
        strides=tuple(hf["downsampling_ratios"]),
        latent_dim=hf["hidden_size"],
    )
    if tuple(hf["upsampling_ratios"]) != tuple(reversed(net.strides)):
        raise ConversionError(
            f"DAC upsampling_ratios {hf['upsampling_ratios']} are not the "
            f"reverse of downsampling_ratios {hf['downsampling_ratios']}"
        )
    quant = QuantizerConfig(
        "factorized",
        hf["n_codebooks"],
        hf["codebook_size"],
        hf["codebook_dim"],
        dropout=hf.get("quantizer_dropout", 0.0),
    )
    return CodecConfig(name, hf["sampling_rate"], net, quant)


def _dac_resunit(src: SourceTensors, prefix: str) -> dict:
    return {
        "snake_0": snake(src, f"{prefix}.snake1"),
        "conv_0": conv(src, f"{prefix}.conv1"),
        "snake_1": snake(src, f"{prefix}.snake2"),
        "conv_1": conv(src, f"{prefix}.conv2"),
    }


def dac_variables(src: SourceTensors, cfg: CodecConfig) -> dict:
    num_blocks = len(cfg.network.strides)
    enc = {
        "stem": conv(src, "encoder.conv1"),
        "head_snake": snake(src, "encoder.snake1"),
        "head": conv(src, "encoder.conv2"),
    }
    dec = {
        "stem": conv(src, "decoder.conv1"),
        "head_snake": snake(src, "decoder.snake1"),
        "head": conv(src, "decoder.conv2"),
    }
    for b in range(num_blocks):
        for j in range(3):
            enc[f"block_{b}_res_{j}"] = _dac_resunit(src, f"encoder.block.{b}.res_unit{j + 1}")
            dec[f"block_{b}_res_{j}"] = _dac_resunit(src, f"decoder.block.{b}.res_unit{j + 1}")
        enc[f"block_{b}_snake"] = snake(src, f"encoder.block.{b}.snake1")
        enc[f"block_{b}_down"] = conv(src, f"encoder.block.{b}.conv1")
        dec[f"block_{b}_snake"] = snake(src, f"decoder.block.{b}.snake1")
        dec[f"block_{b}_up"] = conv_transpose(src, f"decoder.block.{b}.conv_t1")
    levels = [
        (
            conv(src, f"quantizer.quantizers.{q}.in_proj"),
            conv(src, f"quantizer.quantizers.{q}.out_proj"),
            src.take(f"quantizer.quantizers.{q}.codebook.weight"),
        )
        for q in range(cfg.num_codebooks)
    ]
    quant = {
        "in_v": np.stack([p["weight_v"][0] for p, _, _ in levels]),  # [Q, D, d]
        "in_g": np.stack([p["weight_g"] for p, _, _ in levels]),
        "in_b": np.stack([p["bias"] for p, _, _ in levels]),
        "out_v": np.stack([p["weight_v"][0] for _, p, _ in levels]),  # [Q, d, D]
        "out_g": np.stack([p["weight_g"] for _, p, _ in levels]),
        "out_b": np.stack([p["bias"] for _, p, _ in levels]),
        "codebook": np.stack([c for _, _, c in levels]),
    }
    return {"params": {"encoder": enc, "decoder": dec, "quantizer": quant}}


# -- entry point ------------------------------------------------------------------------------

FAMILIES = {"encodec": (encodec_config, encodec_variables), "dac": (dac_config, dac_variables)}


def check_against(reference: dict, converted: dict, origin: str) -> None:
    """Every nclm variable must be present with the right shape, and nothing else."""
    ref = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(reference)}
    got = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(converted)}
    for key in sorted(ref):
        if key not in got:
            raise ConversionError(f"{origin}: nothing converted into nclm variable {key}")
        if tuple(ref[key].shape) != tuple(np.shape(got[key])):
            raise ConversionError(
                f"{origin}: nclm variable {key} expects shape "
                f"{tuple(ref[key].shape)}, converted {tuple(np.shape(got[key]))}"
            )
    extra = sorted(set(got) - set(ref))
    if extra:
        raise ConversionError(f"{origin}: converted variables the model lacks: {extra[:5]}")


def convert_transformers_dir(src_dir: str | os.PathLike) -> tuple[CodecConfig, dict]:
    """Reads a transformers EnCodec/DAC directory -> (CodecConfig, variables)."""
    src_dir = Path(src_dir)
    config_file = src_dir / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{src_dir}: not a transformers model directory (no config.json)")
    hf = json.loads(config_file.read_text())
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise ConversionError(
            f"{config_file}: model_type {model_type!r} is not supported; "
            f"expected one of {sorted(FAMILIES)}"
        )
    make_config, make_variables = FAMILIES[model_type]
    try:
        cfg = make_config(hf, f"{model_type}_{hf['sampling_rate'] // 1000}khz")
    except KeyError as e:
        raise ConversionError(f"{config_file}: missing key {e}") from None
    src = SourceTensors(read_state_dict(src_dir), str(src_dir))
    variables = jax.tree_util.tree_map(np.asarray, make_variables(src, cfg))
    src.check_all_used()
    reference = jax.eval_shape(lambda: init_codec(cfg, jax.random.PRNGKey(0)))
    check_against(reference, variables, str(src_dir))
    return cfg, variables


def convert_transformers(src_dir: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """Converts and saves; returns the new codec id."""
    cfg, variables = convert_transformers_dir(src_dir)
    return save_codec(
        out_dir, cfg, variables, extra={"converted_from": str(Path(src_dir).absolute())}
    )
