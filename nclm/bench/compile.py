"""`nclm bench compile`: compile time and program size of the codec LM's decoding and evaluation
programs (AR, NAR, masked decoding, the LM evaluation step).

    nclm bench compile --preset small [--batch 1] [--context 64] [--frames 64]

Each program is lowered and compiled ahead of time on random weights of the preset (the decoders
in decoding form, nclm.lm.model.for_decoding, as `nclm tts` runs them); the table
gives lower and compile seconds, the optimized HLO's instruction count (lines of
`compiled.as_text()` that define a value, fused computations included) and its size in kB. A
program that unrolls a Python loop over codebook levels grows with Q; one that loops over a
traced level does not.
"""

from __future__ import annotations

import argparse
import time

from nclm.bench.report import environment, finish


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=["tiny", "small", "valle"], default="tiny")
    parser.add_argument("--batch", type=int, default=1, help="rows (1)")
    parser.add_argument("--context", type=int, default=64, help="text + prompt tokens (64)")
    parser.add_argument("--frames", type=int, default=64, help="generated frames / AR steps (64)")
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")


def hlo_instructions(text: str) -> int:
    """Instructions in an optimized HLO module's text: the lines that define a value."""
    return sum(1 for line in text.splitlines() if " = " in line and line.startswith("  "))


def _programs(cfg, params, args) -> dict:
    """name -> (jitted fn, args, kwargs) for every program measured."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nclm.decode.ar import ar_generate
    from nclm.decode.masked import MaskedSchedule, masked_generate
    from nclm.decode.nar import nar_generate
    from nclm.lm.model import for_decoding
    from nclm.train.lm_step import make_lm_eval_step

    rng = np.random.default_rng(0)
    b, g, q = args.batch, args.frames, cfg.num_codebooks
    num_text = max(1, args.context // 4)
    num_prompt = max(1, args.context - num_text)
    text = jnp.asarray(rng.integers(3, cfg.text_vocab_size, (b, num_text)), jnp.int32)
    prompt = jnp.asarray(rng.integers(0, cfg.codebook_size, (b, q, num_prompt)), jnp.int32)
    codes = jnp.asarray(rng.integers(0, cfg.codebook_size, (b, q, g)), jnp.int32)
    text_len, prompt_len = jnp.full((b,), num_text), jnp.full((b,), num_prompt)
    gen_len, key = jnp.full((b,), g), jax.random.PRNGKey(0)
    objective = {"prompt_eval": 0.25, "masked_weight": 1.0}
    batch = {"text": text, "text_len": text_len, "codes": codes, "code_len": gen_len}
    dcfg, dparams = for_decoding(cfg, params)  # the decoders run what `nclm tts` loads
    return {
        "ar": (ar_generate, (dparams, text, text_len, prompt[:, 0], prompt_len, key),
               {"cfg": dcfg, "max_new": g}),
        "nar": (nar_generate, (dparams, text, text_len, prompt, prompt_len, codes[:, 0], gen_len,
                               key), {"cfg": dcfg}),
        "masked": (masked_generate, (dparams, text, text_len, prompt, prompt_len, gen_len, key),
                   {"cfg": dcfg, "num_frames": g, "schedule": MaskedSchedule()}),
        "eval": (jax.jit(make_lm_eval_step(cfg, objective)), (params, batch), {}),
    }  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    import flax.linen as nn
    import jax

    from nclm.lm.config import PRESETS
    from nclm.lm.model import init_lm

    cfg = PRESETS[args.preset]()
    params = nn.meta.unbox(init_lm(cfg, jax.random.PRNGKey(0)))["params"]
    command = (
        f"nclm bench compile --preset {args.preset} --batch {args.batch} "
        f"--context {args.context} --frames {args.frames}"
    )
    print(f"{command}\n{'program':>8} {'lower s':>8} {'compile s':>9} {'HLO instr':>9} {'kB':>7}")
    rows = []
    for name, (fn, fn_args, kwargs) in _programs(cfg, params, args).items():
        start = time.perf_counter()
        lowered = fn.lower(*fn_args, **kwargs)
        lower_s = time.perf_counter() - start
        start = time.perf_counter()
        text = lowered.compile().as_text()
        compile_s = time.perf_counter() - start
        row = {"program": name, "lower_s": lower_s, "compile_s": compile_s,
               "hlo_instructions": hlo_instructions(text), "hlo_kb": len(text) / 1e3}  # fmt: skip
        rows.append(row)
        print(
            f"{name:>8} {lower_s:>8.2f} {compile_s:>9.2f} {row['hlo_instructions']:>9} "
            f"{row['hlo_kb']:>7.0f}",
            flush=True,
        )
    result = {"command": command, **environment(), "results": rows}
    return finish(result, args.json, print_json=True)
