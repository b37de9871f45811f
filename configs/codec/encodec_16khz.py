"""Codec `encodec_16khz` (numbers in shared/REFERENCE.md sections 0-2).

Make a randomly initialised checkpoint (later: train it):
    nclm codec init --config configs/codec/encodec_16khz.py --out runs/encodec_16khz
Shrink for tests and CPU smoke runs with the `tiny` arg (same code path, a fraction of the width):
    nclm codec init --config configs/codec/encodec_16khz.py:tiny --out runs/encodec_16khz_tiny
"""

from nclm.codec import config as codecs
from nclm.codec.experiment import codec_experiment


def get_config(arg=None):
    codec = codecs.encodec_16khz() if arg != "tiny" else codecs.tiny("seanet")
    return codec_experiment(codec, tiny=arg == "tiny")
