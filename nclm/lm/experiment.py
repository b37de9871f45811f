"""LM experiment configs: the CodecLM plus data, objective, optimizer, mesh and loop settings,
as one ConfigDict (`nclm train --config configs/lm/<name>.py` trains it)."""

from __future__ import annotations

import ml_collections

from nclm.config import ConfigError, loop_schedule
from nclm.lm.config import LMConfig
from nclm.sharding import DEFAULT_RULES


def lm_experiment(lm: LMConfig, *, tiny: bool = False) -> ml_collections.ConfigDict:
    """`lm.text_vocab_size = 0` takes the size of the token corpus's symbol table."""
    cfg = ml_collections.ConfigDict()
    cfg.lm = lm.to_dict()
    cfg.seed = 0
    cfg.init_from = ""  # an exported LM (WORKDIR/lm) to start from; SpeechX fine-tunes TTS
    cfg.data = dict(
        train="",  # a directory written by `nclm tokens extract`
        valid="",
        text_buckets=(32, 64, 128, 256) if not tiny else (32, 64, 128),
        frame_buckets=(128, 256, 512, 1024, 1536) if not tiny else (64, 128, 256),
        max_tokens=24_000 if not tiny else 2048,  # text + frame slots per global batch
        eval_batches=8,
    )
    cfg.objective = dict(
        ar_weight=1.0,
        nar_weight=1.0,
        prompt_low=0.15,  # NAR prefix prompt: 15-30 % of the utterance, at most 225 frames
        prompt_high=0.3,
        prompt_cap=225,
        prompt_eval=0.25,  # validation uses a fixed 25 % prompt
        masked_weight=0.0,  # > 0 trains the SoundStorm objective on the same tree
        mask_span=1,  # masked frames come in spans of this many frames (MAGNeT: 3)
        cond_drop=0.1,  # null-condition rate of the masked objective (guidance)
    )
    cfg.optim = dict(
        lr=5e-4 if not tiny else 2e-3,
        warmup_steps=32_000 if not tiny else 50,
        b1=0.9,
        b2=0.98,
        weight_decay=0.01,
        clip_norm=1.0,
    )
    cfg.train = loop_schedule(
        steps=800_000 if not tiny else 200,
        log_every=100 if not tiny else 10,
        eval_every=5000 if not tiny else 100,
        compute_dtype="float32",  # "bfloat16" on GPU/TPU; parameters and optimizer stay float32
    )
    cfg.mesh = dict(data=-1, fsdp=1, tensor=1)
    cfg.sharding_rules = tuple((name, axes) for name, axes in DEFAULT_RULES)
    return cfg


def lm_config_from(cfg: ml_collections.ConfigDict, num_symbols: int | None = None) -> LMConfig:
    """The LMConfig of an experiment; text_vocab_size 0 becomes the corpus's table size."""
    if "lm" not in cfg:
        raise ConfigError("config has no 'lm' section")
    d = cfg.lm.to_dict()
    if num_symbols is not None:
        if d.get("text_vocab_size", 0) == 0:
            d["text_vocab_size"] = num_symbols
        elif d["text_vocab_size"] < num_symbols:
            raise ConfigError(
                f"--config.lm.text_vocab_size={d['text_vocab_size']} is smaller than the token "
                f"corpus's symbol table ({num_symbols}); set it to 0 to follow the corpus"
            )
    try:
        return LMConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"lm config: {e}") from None
