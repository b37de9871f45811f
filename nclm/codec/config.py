"""Codec settings as frozen dataclasses with named presets; they round-trip through JSON.

A codec is a network family (SEANet as in EnCodec, or DAC's Snake network), a quantizer (EMA RVQ or
DAC's factorized RVQ) and a decoder head (the family's own waveform decoder, or Vocos).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from nclm.config import check_keys, dataclass_from_dict


@dataclass(frozen=True)
class SEANetConfig:
    """EnCodec's SEANet encoder/decoder (REFERENCE.md section 1)."""

    kind: str = "seanet"
    channels: int = 32
    strides: tuple[int, ...] = (2, 4, 5, 8)  # encoder order; the decoder runs them reversed
    latent_dim: int = 128
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    num_residual_layers: int = 1
    dilation_base: int = 2
    compress: int = 2
    lstm_layers: int = 2
    causal: bool = True
    pad_mode: str = "reflect"
    conv_shortcut: bool = True  # 1x1 conv on the residual skip (encodec repo); identity otherwise


@dataclass(frozen=True)
class DACNetConfig:
    """DAC's encoder/decoder with Snake activations (REFERENCE.md section 2)."""

    kind: str = "dac"
    encoder_channels: int = 64
    decoder_channels: int = 1536
    strides: tuple[int, ...] = (2, 4, 8, 8)  # encoder order
    latent_dim: int = 1024


@dataclass(frozen=True)
class QuantizerConfig:
    """`ema`: EnCodec's RVQ with EMA codebooks in the latent space. `factorized`: DAC's RVQ with
    low-dimensional, L2-normalised lookups and learned codebooks."""

    kind: str = "ema"
    num_codebooks: int = 8
    codebook_size: int = 1024
    codebook_dim: int = 128  # = latent_dim for `ema`; the projection size for `factorized`
    decay: float = 0.99
    epsilon: float = 1e-5
    dead_code_threshold: float = 2.0
    kmeans_iters: int = 50
    # `ema`: probability that a training batch uses a random number of levels (variable bandwidth).
    # `factorized`: fraction of batch items that use a random number of levels (DAC).
    dropout: float = 0.0


@dataclass(frozen=True)
class VocosConfig:
    """Vocos decoder: ConvNeXt backbone at the frame rate, iSTFT head (REFERENCE.md section 3).
    n_fft defaults to 4 x hop; the iSTFT hop is the codec hop."""

    dim: int = 384
    hidden: int = 1152
    num_layers: int = 8
    n_fft: int = 0  # 0: 4 x hop
    condition_on_levels: bool = True  # AdaLN over the number of levels used (variable bitrate)
    # The level counts that own an AdaLN row, ascending; () gives every count 1..Q its own row.
    # Published Vocos-EnCodec has rows for 2, 4, 8, 16 levels (1.5, 3, 6, 12 kbps) only: decoding
    # other counts is an error, and training draws between them use the row of the count below.
    condition_levels: tuple[int, ...] = ()


@dataclass(frozen=True)
class CodecConfig:
    name: str = "encodec_24khz"
    sample_rate: int = 24000
    network: SEANetConfig | DACNetConfig = field(default_factory=SEANetConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    decoder: str = "waveform"  # or "vocos"
    vocos: VocosConfig | None = None

    def __post_init__(self):
        if self.decoder not in ("waveform", "vocos"):
            raise ValueError(f"codec decoder must be 'waveform' or 'vocos', got {self.decoder!r}")
        if self.decoder == "vocos" and self.vocos is None:
            object.__setattr__(self, "vocos", VocosConfig())
        if self.decoder == "vocos" and self.vocos.condition_levels:
            levels = self.vocos.condition_levels
            if list(levels) != sorted(set(levels)) or not 1 <= levels[0] <= levels[-1] <= (
                self.quantizer.num_codebooks
            ):
                raise ValueError(
                    f"vocos.condition_levels must be ascending level counts in 1.."
                    f"{self.quantizer.num_codebooks} (quantizer.num_codebooks), got {levels}"
                )
        if self.quantizer.kind not in ("ema", "factorized"):
            raise ValueError(
                f"quantizer.kind must be 'ema' or 'factorized', got {self.quantizer.kind!r}"
            )
        if self.quantizer.kind == "ema" and self.quantizer.codebook_dim != self.network.latent_dim:
            raise ValueError(
                f"quantizer.codebook_dim ({self.quantizer.codebook_dim}) must equal "
                f"network.latent_dim "
                f"({self.network.latent_dim}) for the ema quantizer"
            )
        if self.quantizer.codebook_size & (self.quantizer.codebook_size - 1):
            raise ValueError(
                f"quantizer.codebook_size must be a power of 2, got {self.quantizer.codebook_size}"
            )

    @property
    def hop_length(self) -> int:
        return math.prod(self.network.strides)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def num_codebooks(self) -> int:
        return self.quantizer.num_codebooks

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def bitrate(self, num_levels: int | None = None) -> float:
        """Bits per second at `num_levels` levels (all by default)."""
        levels = self.num_codebooks if num_levels is None else num_levels
        return self.frame_rate * levels * math.log2(self.codebook_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodecConfig:
        d = dict(d)
        net = dict(d.pop("network"))
        net_cls = {"seanet": SEANetConfig, "dac": DACNetConfig}.get(net.get("kind"))
        if net_cls is None:
            raise ValueError(
                f"codec network.kind must be 'seanet' or 'dac', got {net.get('kind')!r}"
            )
        vocos = d.pop("vocos", None)
        return cls(
            network=dataclass_from_dict(net_cls, net, "network"),
            quantizer=dataclass_from_dict(QuantizerConfig, d.pop("quantizer"), "quantizer"),
            vocos=None if vocos is None else dataclass_from_dict(VocosConfig, vocos, "vocos"),
            **check_keys(cls, d, "codec", skip={"network", "quantizer", "vocos"}),
        )


# ---------------------------------------------------------------------------------------------
# Presets (numbers from REFERENCE.md sections 0-3). `tiny_*` presets exist for tests and the
# quickstart: same code paths, a fraction of the width.


def encodec_24khz(num_codebooks: int = 8) -> CodecConfig:
    """VALL-E's codec: 75 Hz x 8 x 1024 = 6 kbps (the published model has 32 levels, 24 kbps)."""
    return CodecConfig(
        "encodec_24khz", 24000, SEANetConfig(), QuantizerConfig("ema", num_codebooks, 1024, 128)
    )


def encodec_16khz(num_codebooks: int = 4) -> CodecConfig:
    """AudioGen/VoiceCraft style: 16 kHz, hop 320 -> 50 Hz, 4 x 2048, 64 base channels."""
    return CodecConfig(
        "encodec_16khz",
        16000,
        SEANetConfig(channels=64),
        QuantizerConfig("ema", num_codebooks, 2048, 128),
    )


def dac(sample_rate: int) -> CodecConfig:
    table = {  # sample rate -> (strides, codebooks)
        16000: ((2, 4, 5, 8), 12),
        24000: ((2, 4, 5, 8), 32),
        44100: ((2, 4, 8, 8), 9),
    }
    if sample_rate not in table:
        raise ValueError(f"DAC presets exist for {sorted(table)} Hz, not {sample_rate}")
    strides, num_codebooks = table[sample_rate]
    return CodecConfig(
        f"dac_{sample_rate // 1000}khz",
        sample_rate,
        DACNetConfig(strides=strides),
        QuantizerConfig("factorized", num_codebooks, 1024, 8, dropout=0.5),
    )


def codec_comparison_4kbps(variant: str) -> CodecConfig:
    """The four 16 kHz / 50 Hz / 4 kbps codecs compared in seed paper 002 (8 levels x 1024 codes at
    50 Hz = 4 kbps): `ema` (EnCodec-style baseline), `ema_vocos`, `dac`, `dac_vocos`."""
    if variant not in ("ema", "ema_vocos", "dac", "dac_vocos"):
        raise ValueError(f"variant must be ema, ema_vocos, dac or dac_vocos, got {variant!r}")
    decoder = "vocos" if variant.endswith("vocos") else "waveform"
    vocos = VocosConfig(dim=512, hidden=1536, num_layers=8) if decoder == "vocos" else None
    if variant.startswith("ema"):
        return CodecConfig(
            f"cmp4k_{variant}",
            16000,
            SEANetConfig(channels=32, causal=False),
            QuantizerConfig("ema", 8, 1024, 128, dropout=0.5),
            decoder,
            vocos,
        )
    return CodecConfig(
        f"cmp4k_{variant}",
        16000,
        DACNetConfig(strides=(2, 4, 5, 8)),
        QuantizerConfig("factorized", 8, 1024, 8, dropout=0.5),
        decoder,
        vocos,
    )


def tiny(kind: str = "seanet", decoder: str = "waveform", sample_rate: int = 16000) -> CodecConfig:
    """A few-hundred-thousand-parameter codec for tests and CPU quickstarts (hop 320)."""
    if kind == "seanet":
        net = SEANetConfig(channels=8, latent_dim=32, lstm_layers=1)
        quant = QuantizerConfig("ema", 4, 256, 32)
    elif kind == "dac":
        net = DACNetConfig(
            encoder_channels=8, decoder_channels=96, strides=(2, 4, 5, 8), latent_dim=64
        )
        quant = QuantizerConfig("factorized", 4, 256, 8)
    else:
        raise ValueError(f"tiny codec kind must be 'seanet' or 'dac', got {kind!r}")
    vocos = VocosConfig(dim=64, hidden=128, num_layers=2) if decoder == "vocos" else None
    return CodecConfig(f"tiny_{kind}_{decoder}", sample_rate, net, quant, decoder, vocos)
