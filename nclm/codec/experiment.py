"""Codec experiment configs: the codec plus everything a training run needs, as one ConfigDict.

Loss weights, optimizer and discriminators default to the published recipe of the codec family
(REFERENCE.md sections 1-4): EnCodec-style (EMA RVQ) codecs train with the MS-STFT discriminator,
hinge losses and relative feature matching; DAC-style (factorized RVQ) and Vocos decoders with
MPD + multi-band STFT discriminators and least-squares GAN losses.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from nclm.codec.config import CodecConfig
from nclm.config import ConfigError, loop_schedule
from nclm.sharding import DEFAULT_RULES


def _recipe(codec: CodecConfig) -> dict:
    if codec.quantizer.kind == "ema" and codec.decoder == "waveform":
        return dict(
            discriminator="encodec",
            losses=dict(
                gan="hinge",
                relative_feature_matching=True,
                balancer=False,
                weights=dict(l1=0.1, mel=1.0, adv=3.0, feat=3.0, commit=1.0, codebook=0.0),
            ),
            optim=dict(lr=3e-4, b1=0.5, b2=0.9, disc_lr=3e-4),
        )
    mel = 45.0 if codec.decoder == "vocos" else 15.0
    return dict(
        discriminator="dac",
        losses=dict(
            gan="lsgan",
            relative_feature_matching=False,
            balancer=False,
            weights=dict(l1=0.0, mel=mel, adv=1.0, feat=2.0, commit=0.25, codebook=1.0),
        ),
        optim=dict(lr=1e-4, b1=0.8, b2=0.9, disc_lr=1e-4),
    )


def codec_experiment(
    codec: CodecConfig, *, tiny: bool = False, **fields
) -> ml_collections.ConfigDict:
    """The full experiment: `codec` (the model) plus data, losses, optimizer, discriminator, mesh
    and loop settings. `tiny` shrinks the discriminator and the run for CPU tests."""
    from nclm.codec import discriminators

    recipe = _recipe(codec)
    if tiny:
        disc = discriminators.tiny_discriminators(recipe["discriminator"])
    else:
        disc = {
            "encodec": discriminators.encodec_discriminators,
            "dac": discriminators.dac_discriminators,
        }[recipe["discriminator"]]()
    cfg = ml_collections.ConfigDict()
    cfg.codec = codec.to_dict()
    cfg.discriminator = dataclasses.asdict(disc)
    cfg.seed = 0
    # a codec checkpoint to fine-tune (`nclm codec convert` or a run's WORKDIR/codec), with the
    # same codec config; its codebooks are kept (no k-means) and the discriminators start fresh
    cfg.init_from = ""
    cfg.data = dict(
        train="",
        valid="",
        segment_seconds=1.0 if not tiny else 0.4,
        batch_size=16 if not tiny else 4,
        short="pad",
        eval_items=8,
    )
    cfg.losses = dict(recipe["losses"], adversarial_start_step=0)
    cfg.optim = dict(recipe["optim"], weight_decay=0.0, decay_rate=0.999996, clip_norm=1000.0)
    cfg.train = loop_schedule(
        steps=100_000 if not tiny else 20,
        log_every=50 if not tiny else 5,
        eval_every=2000 if not tiny else 10,
        kmeans_init=codec.quantizer.kind == "ema",
        num_audio_samples=2,
        # bfloat16 on GPU/TPU: encoder, decoder and discriminators compute in bf16; parameters,
        # optimizer state, quantizer distances and losses stay float32. Evaluation runs in float32.
        compute_dtype="float32",
    )
    cfg.mesh = dict(data=-1, fsdp=1, tensor=1)
    cfg.sharding_rules = tuple((name, axes) for name, axes in DEFAULT_RULES)
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
