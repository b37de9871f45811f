"""The LM evaluation step runs its per-level NAR and masked passes in one `lax.map` body (a
traced level) and gives the metrics of the unrolled Python loop over levels it replaced."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nclm.lm import config as C
from nclm.lm.model import CodecLM, init_lm
from nclm.train.lm_step import make_lm_eval_step, masked_terms, nar_terms

CFG = C.tiny(num_codebooks=3, codebook_size=16, text_vocab_size=20)
OBJECTIVE = {"prompt_eval": 0.3, "masked_weight": 1.0}


def _unrolled_levels(params, batch):
    """The evaluation step's level loops before issue 12, as a reference."""
    model, out = CodecLM(CFG), {}
    code_len = batch["code_len"]
    prompt_len = jnp.clip(
        jnp.floor(OBJECTIVE["prompt_eval"] * code_len).astype(jnp.int32),
        0,
        jnp.maximum(code_len - 1, 0),
    )
    for level in range(2, CFG.num_codebooks + 1):
        out[f"nar_{level}"] = nar_terms(model, params, batch, jnp.int32(level), prompt_len)
    half = (jnp.arange(batch["codes"].shape[2])[None] - prompt_len[:, None]) % 2 == 0
    for level in range(1, CFG.num_codebooks + 1):
        no_drop = jnp.zeros_like(code_len, bool)
        terms = masked_terms(model, params, batch, jnp.int32(level), prompt_len, half, no_drop)
        out[f"masked_{level}"] = terms
    return out


def test_eval_step_level_loop_equals_unrolled_levels():
    params = nn.meta.unbox(init_lm(CFG, jax.random.PRNGKey(0)))["params"]
    rng = np.random.default_rng(1)
    batch = {
        "text": jnp.asarray(rng.integers(3, 20, (2, 6)), jnp.int32),
        "text_len": jnp.asarray([6, 4], jnp.int32),
        "codes": jnp.asarray(rng.integers(0, 16, (2, 3, 9)), jnp.int32),
        "code_len": jnp.asarray([9, 6], jnp.int32),
    }
    got = jax.jit(make_lm_eval_step(CFG, OBJECTIVE))(params, batch)
    want = jax.jit(_unrolled_levels)(params, batch)
    names = [f"nar_{q}" for q in (2, 3)] + [f"masked_{q}" for q in (1, 2, 3)]
    assert sorted(k.split("/")[0] for k in got if k.endswith("/tokens")) == sorted(names + ["ar"])
    losses = [float(want[n]["loss"]) for n in names]
    assert len(set(np.round(losses, 4))) == len(names)  # every level differs: order matters
    for name in names:
        t = want[name]
        np.testing.assert_allclose(got[f"{name}/tokens"], t["tokens"], rtol=0)
        for k in ("loss", "top1", "top10"):
            np.testing.assert_allclose(got[f"{name}/{k}"], t[k] * t["tokens"], rtol=1e-6)
