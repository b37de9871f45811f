"""The quickstart codec: a small DAC-style 16 kHz codec (Snake network, factorized RVQ, 8 levels of
256 codes at 50 Hz = 3.2 kbps) with DAC's losses and a reduced MPD + multi-band STFT discriminator,
sized to train for a few minutes on 2 CPU cores (launch/quickstart.sh).

    nclm data synth --out runs/quickstart/corpus
    nclm train --config configs/codec/quickstart.py --workdir runs/quickstart/codec_run \
        --config.data.train=runs/quickstart/corpus/train.jsonl \
        --config.data.valid=runs/quickstart/corpus/valid.jsonl

`quickstart.py:steps=N` sets the number of training steps (default 500).
"""

import dataclasses

from nclm.codec import config as codecs
from nclm.codec.experiment import codec_experiment


def get_config(arg=None):
    steps = 500
    if arg:
        key, _, value = arg.partition("=")
        if key != "steps" or not value.isdigit():
            raise ValueError(f"configs/codec/quickstart.py: arg must be steps=N, got {arg!r}")
        steps = int(value)
    tiny = codecs.tiny("dac")
    codec = dataclasses.replace(
        tiny,
        name="quickstart_dac_16khz",
        quantizer=dataclasses.replace(tiny.quantizer, num_codebooks=8, dropout=0.5),
    )
    cfg = codec_experiment(codec, tiny=True)
    cfg.data.segment_seconds = 0.4
    cfg.data.batch_size = 8
    cfg.data.eval_items = 4
    cfg.optim.lr = cfg.optim.disc_lr = 1e-3  # a short run: faster than DAC's 1e-4
    cfg.train.steps = steps
    cfg.train.log_every = 25
    cfg.train.eval_every = 250
    cfg.train.checkpoint_every = 250
    return cfg
