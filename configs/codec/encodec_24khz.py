"""Codec `encodec_24khz` (numbers in shared/REFERENCE.md sections 0-2).

Make a randomly initialised checkpoint (later: train it):
    nclm codec init --config configs/codec/encodec_24khz.py --out runs/encodec_24khz
Shrink for tests and CPU smoke runs with the `tiny` arg (same code path, a fraction of the width):
    nclm codec init --config configs/codec/encodec_24khz.py:tiny --out runs/encodec_24khz_tiny
"""

from nclm.codec import config as codecs
from nclm.codec.experiment import codec_experiment


def get_config(arg=None):
    codec = codecs.encodec_24khz() if arg != "tiny" else codecs.tiny("seanet")
    return codec_experiment(codec, tiny=arg == "tiny")
