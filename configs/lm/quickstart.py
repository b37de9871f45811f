"""The quickstart LM: a tiny codec LM trained with the VALL-E (AR + NAR) and SoundStorm (masked)
objectives on one shared backbone, on the tokens of the quickstart codec (8 x 256 codes at
50 Hz), sized to train in a few minutes on 2 CPU cores; one checkpoint decodes with
`nclm tts --mode ar`, `--mode masked` and `--mode ar+masked`.

    nclm tokens extract --codec runs/quickstart/codec_run/codec \
        --manifest runs/quickstart/corpus/train.jsonl --out runs/quickstart/tokens/train
    nclm train --config configs/lm/quickstart.py --workdir runs/quickstart/lm_run \
        --config.data.train=runs/quickstart/tokens/train \
        --config.data.valid=runs/quickstart/tokens/valid

`quickstart.py:steps=N` sets the number of training steps.
"""

from nclm.lm import config as lm_configs
from nclm.lm.experiment import lm_experiment


def get_config(arg=None):
    steps = 250  # held-out AR loss is lowest around here; later steps memorize 144 utterances
    if arg:
        key, _, value = arg.partition("=")
        if key != "steps" or not value.isdigit():
            raise ValueError(f"configs/lm/quickstart.py: arg must be steps=N, got {arg!r}")
        steps = int(value)
    lm = lm_configs.tiny(8, 256, text_vocab_size=0, num_layers=3, width=128, ffn=512, dropout=0.1)
    cfg = lm_experiment(lm, tiny=True)
    cfg.data.text_buckets = (48, 96)  # the synthetic corpus: 25-90 phonemes, 60-260 frames
    cfg.data.frame_buckets = (160, 272)
    cfg.data.max_tokens = 3072
    cfg.objective.masked_weight = 1.0
    cfg.optim.lr = 2e-3
    cfg.optim.warmup_steps = 50
    cfg.train.steps = steps
    cfg.train.log_every = 25
    cfg.train.eval_every = 125
    cfg.train.checkpoint_every = 125
    return cfg
