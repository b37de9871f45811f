"""The AR loop moves no weight and no KV cache per step: in the compiled `ar_generate`, no copy,
transpose or slice inside the decoding loop produces an array as large as one layer's cache or a
weight matrix; the only writes to a cache are the new rows, scattered in place.

Before issue 12, each step copied the stacked cache through `nn.scan` (fixed first), then still
sliced every layer's weights and cache out of the stacked arrays and transposed each layer's
[B, L, K, H] cache for the attention matmuls: on the CPU those moves cost more than the step's
own reads (VALL-E size, batch 8: 327 ms a step, 260 after the cache fix, now at the floor). The
cache is allocated inside the jitted call, so the loop's carry is its only owner and no argument
needs donating. A cache that grows in phases (nclm.decode.ar.cache_allowances) has one loop per
buffer size, and each holds to the same rules. Cached decoding == full forward is
tests/lm/test_model.py's."""

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from nclm.decode.ar import ar_generate, cache_allowances
from nclm.lm import config as C
from nclm.lm.model import init_lm

CFG = C.tiny(num_codebooks=2, codebook_size=16, text_vocab_size=20, num_layers=3)
_MOVES = {"copy", "transpose", "dynamic-slice", "slice"}


def computations(hlo: str) -> dict[str, list[str]]:
    """computation name -> its instruction lines, from compiled HLO text."""
    comps, name = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            name = head.group(1)
            comps[name] = []
        elif line.strip() == "}":
            name = None
        elif name:
            comps[name].append(line)
    return comps


def called(comps: dict[str, list[str]], root: str) -> set[str]:
    """root and every computation it calls, transitively (fusions, loops, conditionals)."""
    seen, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        for line in comps[name]:
            todo += re.findall(r"(?:calls|body|condition|to_apply)=%?([\w.\-]+)", line)
            for group in re.findall(r"(?:calls|branch_computations)=\{([^}]*)\}", line):
                todo += [x.strip().lstrip("%") for x in group.split(",")]
    return seen


def loop_ops(hlo: str, carried: str) -> list[tuple[str, str]]:
    """(op, output shape) of every instruction inside the while loops whose carry holds an array
    of shape `carried`."""
    comps = computations(hlo)
    bodies = [
        re.search(r"body=%?([\w.\-]+)", line).group(1)
        for lines in comps.values()
        for line in lines
        if " while(" in line and carried in line.split(" while(")[0]
    ]
    ops = []
    for name in set().union(*(called(comps, b) for b in bodies)) if bodies else ():
        for line in comps[name]:
            m = re.search(r"= (\w+\[[\d,]*\])\{[\d,]*\} ([\w\-]+)\(", line)
            if m:
                ops.append((m.group(2), m.group(1)))
    return ops


def _elements(shape: str) -> int:
    dims = shape[shape.index("[") + 1 : -1]
    return math.prod(int(d) for d in dims.split(",") if d)


# first_cache_frames 0: one buffer; 3: buffers of 3, 6 and 11 rows. Batch 1 apart: XLA drops
# unit axes, and at batch 1 it once transposed each layer's value cache for the attention output.
@pytest.mark.parametrize("b, first_cache_frames", [(1, 0), (2, 0), (2, 3)])
def test_compiled_ar_loop_moves_no_weight_or_cache(b, first_cache_frames):
    params = nn.meta.unbox(init_lm(CFG, jax.random.PRNGKey(0)))["params"]
    num_text, num_prompt, max_new = 5, 7, 11
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
            first_cache_frames=first_cache_frames,
        )  # fmt: skip
        .compile()
        .as_text()
    )
    allowances = cache_allowances(max_new, first_cache_frames)
    assert len(allowances) == (1 if first_cache_frames == 0 else 3)
    head_dim = CFG.width // CFG.num_heads
    smallest_weight = min(CFG.width * CFG.ffn, CFG.width * CFG.width)
    for allowance in allowances:
        size = num_text + 1 + num_prompt + allowance
        cache = f"f32[{b * CFG.num_kv_heads},{size},{head_dim}]"  # one layer's k or v
        ops = loop_ops(hlo, cache)
        assert ops, f"no decoding loop carries a per-layer cache of {size} rows"
        floor = min(_elements(cache), smallest_weight)
        moves = [(op, shape) for op, shape in ops if op in _MOVES and _elements(shape) >= floor]
        assert moves == [], f"the decoding loop over {size} rows moves whole arrays: {moves}"
        writes = [shape for op, shape in ops if op in ("scatter", "dynamic-update-slice")]
        assert writes.count(cache) == 2 * CFG.num_layers  # k and v of each layer, in place
