"""SoundStorm-style masked model at the paper's size: 12 Conformer layers (conv kernel 5), width
1024, 16 heads, FFN 4096, rotary positions, bf16; trained with the masked objective (cosine
ratio, spans of 3 frames as the seed paper's span masking, 10 % condition dropout for guidance).

    nclm train --config configs/lm/soundstorm.py --workdir runs/soundstorm \
        --config.data.train=tokens/train --config.data.valid=tokens/valid
    nclm tts --mode masked --lm runs/soundstorm/lm --codec ... --iterations 16,1 ...

Args (comma-separated): `mixed` also trains the VALL-E AR + NAR objectives on the same tree, so
one checkpoint serves --mode ar, masked and ar+masked; `semantic=K` conditions on K semantic
clusters (nclm tokens extract --semantic); `smoke` shrinks everything for a CPU check.
Set --config.lm.num_codebooks / codebook_size to the codec's (e.g. 8 x 1024 for EnCodec 6 kbps).
"""

from nclm.lm import config as lm_configs
from nclm.lm.experiment import lm_experiment


def get_config(arg=None):
    args = dict(a.partition("=")[::2] for a in (arg or "").split(",") if a)
    unknown = set(args) - {"mixed", "semantic", "smoke"}
    if unknown:
        raise ValueError(f"configs/lm/soundstorm.py: unknown args {sorted(unknown)}")
    semantic = int(args.get("semantic") or 0)
    if "smoke" in args:
        lm = lm_configs.tiny(8, 1024, text_vocab_size=0, conv_kernel=5)
        cfg = lm_experiment(lm, tiny=True)
    else:
        lm = lm_configs.valle(
            text_vocab_size=0,
            conv_kernel=5,
            remat="dots_no_batch",
            dropout=0.1,
            vocab_multiple=128,  # the AR head 1025 -> 1152 columns: shards over tensor
        )
        cfg = lm_experiment(lm)
        cfg.train.compute_dtype = "bfloat16"
    cfg.lm.name = "soundstorm"
    cfg.lm.semantic_vocab_size = semantic
    cfg.objective.masked_weight = 1.0
    cfg.objective.mask_span = 3
    if "mixed" not in args:
        cfg.objective.ar_weight = cfg.objective.nar_weight = 0.0
    return cfg
