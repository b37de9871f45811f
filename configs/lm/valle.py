"""VALL-E (AR + NAR in one parameter tree) at the paper's size: 12 layers, width 1024, 16 heads,
FFN 4096, on EnCodec 24 kHz tokens (8 x 1024 at 75 Hz), bf16 compute.

    nclm tokens extract --codec runs/encodec24 --manifest corpus/train.jsonl --out tokens/train
    nclm tokens extract --codec runs/encodec24 --manifest corpus/valid.jsonl --out tokens/valid \
        --symbols tokens/train/symbols.json
    nclm train --config configs/lm/valle.py --workdir runs/valle \
        --config.data.train=tokens/train --config.data.valid=tokens/valid

Args: `valle.py:separate` keeps two stacks (AR, NAR) in the tree instead of one shared backbone;
`valle.py:smoke` shrinks everything for a CPU check. The codebook shape must match the tokens:
override --config.lm.num_codebooks / --config.lm.codebook_size for another codec.
"""

from nclm.lm import config as lm_configs
from nclm.lm.experiment import lm_experiment


def get_config(arg=None):
    args = set((arg or "").split(",")) - {""}
    unknown = args - {"separate", "smoke"}
    if unknown:
        raise ValueError(f"configs/lm/valle.py: unknown args {sorted(unknown)}")
    shared = "separate" not in args
    if "smoke" in args:
        cfg = lm_experiment(
            lm_configs.tiny(8, 1024, shared_backbone=shared, text_vocab_size=0), tiny=True
        )
        return cfg
    # remat: keep matmul outputs without a batch dim, recompute the [B, N, L, L] attention maps
    lm = lm_configs.valle(
        text_vocab_size=0, shared_backbone=shared, remat="dots_no_batch", vocab_multiple=128
    )
    cfg = lm_experiment(lm)
    cfg.train.compute_dtype = "bfloat16"
    return cfg
