"""A tiny random-weight codec and LM checkpoint pair, as the task commands load them."""

import flax.linen as nn
import jax

from nclm.codec import config as codec_config
from nclm.codec.interface import NeuralCodec
from nclm.codec.model import init_codec
from nclm.lm import config as lm_config
from nclm.lm.checkpoint import save_lm
from nclm.lm.model import init_lm
from nclm.text.frontend import TextFrontend
from nclm.text.symbols import SymbolTable


def write_tiny_checkpoints(root, corpus: list[str], extra: dict) -> None:
    """root/codec (tiny DAC, 4 x 256 codes) and root/lm (a grapheme table of `corpus`; `extra`
    goes into lm.json: limits, trained tasks)."""
    ccfg = codec_config.tiny("dac")
    codec = NeuralCodec(ccfg, init_codec(ccfg, jax.random.PRNGKey(0)))
    cid = codec.save(root / "codec")
    frontend = TextFrontend("graphemes")
    table = SymbolTable.build(frontend.tokens_batch(corpus), frontend)
    cfg = lm_config.tiny(num_codebooks=4, codebook_size=256, text_vocab_size=len(table))
    params = nn.meta.unbox(init_lm(cfg, jax.random.PRNGKey(1)))["params"]
    facts = {
        "codec_id": cid,
        "sample_rate": ccfg.sample_rate,
        "frame_rate": codec.frame_rate,
        "num_codebooks": 4,
        "codebook_size": 256,
    }
    save_lm(root / "lm", cfg, params, table, facts, extra)
