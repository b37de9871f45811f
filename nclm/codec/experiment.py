"""Glue between experiment ConfigDicts and codec settings."""

from __future__ import annotations

import ml_collections

from nclm.codec.config import CodecConfig
from nclm.config import ConfigError


def codec_experiment(codec: CodecConfig, **fields) -> ml_collections.ConfigDict:
    """An experiment config holding `codec` (the model) plus run-level fields such as `seed`."""
    cfg = ml_collections.ConfigDict()
    cfg.codec = codec.to_dict()
    cfg.seed = 0
    for key, value in fields.items():
        cfg[key] = value
    return cfg


def codec_config_from(cfg: ml_collections.ConfigDict) -> CodecConfig:
    if "codec" not in cfg:
        raise ConfigError("config has no 'codec' section")
    try:
        return CodecConfig.from_dict(cfg.codec.to_dict())
    except (TypeError, ValueError) as e:
        raise ConfigError(f"codec config: {e}") from None
