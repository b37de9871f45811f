"""Codec `dac_24khz` (numbers in shared/REFERENCE.md sections 0-2).

Make a randomly initialised checkpoint (later: train it):
    nclm codec init --config configs/codec/dac_24khz.py --out runs/dac_24khz
Shrink for tests and CPU smoke runs with the `tiny` arg (same code path, a fraction of the width):
    nclm codec init --config configs/codec/dac_24khz.py:tiny --out runs/dac_24khz_tiny
"""

from nclm.codec import config as codecs
from nclm.codec.experiment import codec_experiment


def get_config(arg=None):
    codec = codecs.dac(24000) if arg != "tiny" else codecs.tiny("dac")
    return codec_experiment(codec, tiny=arg == "tiny")
