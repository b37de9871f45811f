"""The four 16 kHz / 50 Hz / 4 kbps codecs compared in seed paper 002 (8 levels x 1024 codes):

    configs/codec/compare_4kbps.py:ema         EnCodec-style baseline (SEANet + EMA RVQ)
    configs/codec/compare_4kbps.py:ema_vocos   baseline encoder + Vocos decoder
    configs/codec/compare_4kbps.py:dac         DAC (Snake network + factorized RVQ)
    configs/codec/compare_4kbps.py:dac_vocos   DAC encoder + Vocos decoder

    nclm codec init --config configs/codec/compare_4kbps.py:dac_vocos --out runs/cmp_dac_vocos
Append `_tiny` to the arg (e.g. `dac_vocos_tiny`) for a CPU-sized version of the same layout.
"""

from nclm.codec import config as codecs
from nclm.codec.experiment import codec_experiment


def get_config(arg=None):
    variant = arg or "ema"
    if variant.endswith("_tiny"):
        base = variant.removesuffix("_tiny")
        kind = "dac" if base.startswith("dac") else "seanet"
        return codec_experiment(
            codecs.tiny(kind, "vocos" if base.endswith("vocos") else "waveform"), tiny=True
        )
    return codec_experiment(codecs.codec_comparison_4kbps(variant))
