"""The AR loop updates the KV cache in place: in the compiled `ar_generate`, no copy of the
stacked cache [layers, B, L, K, H] runs inside a loop (before issue 12 the cache went through
`nn.scan` as a scanned input and output, and each decoding step copied it whole, twice). The
cache is allocated inside the jitted call, so the while loop's carry is its only owner and no
argument needs donating. Cached decoding == full forward is tests/lm/test_model.py's."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from nclm.decode.ar import ar_generate
from nclm.lm import config as C
from nclm.lm.model import init_lm

CFG = C.tiny(num_codebooks=2, codebook_size=16, text_vocab_size=20, num_layers=3)


def cache_copies(hlo: str, shape: str) -> dict[str, int]:
    """computation name -> number of `copy` instructions producing `shape` in it."""
    counts, computation = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            computation = ("ENTRY " if head.group(1) else "") + head.group(2)
        elif re.search(rf"= {re.escape(shape)}\{{[\d,]*\}} copy\(", line):
            counts[computation] = counts.get(computation, 0) + 1
    return counts


def test_compiled_ar_loop_does_not_copy_the_cache():
    params = nn.meta.unbox(init_lm(CFG, jax.random.PRNGKey(0)))["params"]
    b, num_text, num_prompt, max_new = 2, 5, 7, 11
    text, prompt = jnp.ones((b, num_text), jnp.int32), jnp.ones((b, num_prompt), jnp.int32)
    lengths = jnp.full((b,), num_text), jnp.full((b,), num_prompt)
    hlo = (
        ar_generate.lower(
            params,
            text,
            lengths[0],
            prompt,
            lengths[1],
            jax.random.PRNGKey(1),
            cfg=CFG,
            max_new=max_new,
        )  # fmt: skip
        .compile()
        .as_text()
    )
    size = num_text + 1 + num_prompt + max_new
    head_dim = CFG.width // CFG.num_heads
    shape = f"f32[{CFG.num_layers},{b},{size},{CFG.num_kv_heads},{head_dim}]"
    copies = cache_copies(hlo, shape)
    inside_loops = {name: n for name, n in copies.items() if not name.startswith("ENTRY")}
    assert inside_loops == {}, f"the cache is copied inside {inside_loops}"
    assert sum(copies.values()) <= 1  # at most the zeros the call starts from
    assert f"{shape}{{4,3,2,1,0}} scatter(" in hlo  # new rows are scattered into the stack
