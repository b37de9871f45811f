"""`nclm bench lm-train`: the CodecLM training step's time, tokens/s and model FLOPs utilisation.

    nclm bench lm-train --config configs/lm/valle.py --batch 16 --text 64 --frames 1024 \
        [--peak-tflops 989] [--steps 10] [--json OUT] [--config.key=value ...]

Builds the run's trainer on all devices, compiles the step (timed separately), then times
`--steps` steps on one fixed batch of random tokens (every row full: `--text` text slots and
`--frames` - 1 frames). Tokens/s counts text + frame positions of both passes' sequence.

Model FLOPs are counted as MaxText does (matmuls only, 2 FLOPs per multiply-add, backward = 2x
forward, attention scores and values at 4 B S^2 N H per layer, halved for the causal AR pass),
over the passes of a step: AR over [text | BOS + frames], NAR and (when trained) masked over
[text | frames].
MFU = model FLOPs / step time / `--peak-tflops` (H200 bf16 dense: 989).

--vs transformers: a transformers Llama matched in width, depth, heads and weights per layer
(nclm/bench/vs_transformers.py) trains on the same batch x length tokens, as many rows per step
as our step runs passes (AR, NAR, masked), with AdamW; its steps alternate with ours and both
report tokens/s (the same tokens counted once per step) and the ratio.
"""

from __future__ import annotations

import argparse
import statistics

from nclm.bench.report import environment, finish
from nclm.bench.step_timing import time_train_step


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE.py[:ARG]|config.json")
    parser.add_argument("--batch", type=int, default=8, help="rows per step (8)")
    parser.add_argument("--text", type=int, default=64, help="text slots per row (64)")
    parser.add_argument("--frames", type=int, default=256, help="audio slots per row (256)")
    parser.add_argument("--text-vocab", type=int, default=128, help="symbol table size (128)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after compiling (10)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="device peak, for MFU")
    parser.add_argument("--json", metavar="OUT", help="also write the result as JSON")
    parser.add_argument(
        "--vs",
        choices=["transformers"],
        help="also time a matched transformers Llama (torch) step, alternating with ours",
    )


def pass_flops(cfg, batch: int, length: int, vocab_out: int, causal: bool) -> float:
    """Training FLOPs (forward + backward) of one pass of `batch` x `length` positions."""
    d, f, h = cfg.width, cfg.ffn, cfg.width // cfg.num_heads
    n, k = cfg.num_heads, cfg.num_kv_heads
    tokens = batch * length
    per_layer = 2 * tokens * (d * (n + 2 * k) * h + n * h * d + 2 * d * f)  # qkv, out, FFN
    attention = 4 * batch * length**2 * n * h * (0.5 if causal else 1.0)
    head = 2 * tokens * d * vocab_out
    return 3.0 * (cfg.num_layers * (per_layer + attention) + head)


def run(args: argparse.Namespace, overrides: list[str] = ()) -> dict:
    import jax
    import numpy as np

    from nclm.config import load_config
    from nclm.lm.experiment import lm_config_from
    from nclm.sharding import batch_sharding, make_mesh
    from nclm.train.lm_train import BATCH_KEYS, build_lm_trainer

    cfg = load_config(args.config, list(overrides))
    lm = lm_config_from(cfg, args.text_vocab)
    mesh = make_mesh(dict(cfg.mesh))
    rules = tuple(tuple(r) for r in cfg.sharding_rules)
    trainer = build_lm_trainer(cfg, lm, mesh)
    rng = np.random.default_rng(0)
    b, lt, t = args.batch, args.text, args.frames
    local = {
        "text": rng.integers(3, args.text_vocab, (b, lt)).astype(np.int32),
        "text_len": np.full(b, lt, np.int32),
        "codes": rng.integers(0, lm.codebook_size, (b, lm.num_codebooks, t)).astype(np.int32),
        "code_len": np.full(b, t - 1, np.int32),
    }
    batch = {
        k: jax.device_put(local[k], batch_sharding(mesh, local[k].ndim, rules)) for k in BATCH_KEYS
    }
    key = jax.random.PRNGKey(0)
    passes = 1 + (lm.num_codebooks > 1 and cfg.objective.nar_weight > 0)
    passes += cfg.objective.get("masked_weight", 0.0) > 0
    reference = None
    if args.vs:  # the same tokens through as many causal passes (rows) as our step runs
        from nclm.bench.vs_transformers import llama_like, llama_train_step

        reference = llama_train_step(llama_like(lm, lt + t), b * passes, lt + t)
    compile_seconds, times, theirs = time_train_step(
        trainer.step, trainer.init(key), batch, key, args.steps, reference
    )
    step = statistics.median(times)
    flops = pass_flops(lm, b, lt + t, lm.codebook_size + 1, causal=True)
    if lm.num_codebooks > 1 and cfg.objective.nar_weight > 0:
        flops += pass_flops(lm, b, lt + t, lm.codebook_size, causal=False)
    if cfg.objective.get("masked_weight", 0.0) > 0:
        flops += pass_flops(lm, b, lt + t, lm.codebook_size, causal=False)
    dtype = cfg.train.compute_dtype
    result = {
        "command": "nclm bench lm-train "
        + " ".join(
            [f"--config {args.config}", f"--batch {b}", f"--text {lt}", f"--frames {t}"]
            + [f"--steps {args.steps}", *overrides]
        ),
        "model": f"{lm.name} {lm.num_layers}x{lm.width} heads {lm.num_heads} ffn {lm.ffn} "
        f"{'shared' if lm.shared_backbone else 'separate'} {dtype}",
        **environment(),
        "compile_seconds": compile_seconds,
        "step_seconds_median": step,
        "tokens_per_second": b * (lt + t) / step,
        "model_tflops_per_second": flops / step / 1e12,
        "mfu": flops / step / (args.peak_tflops * 1e12) if args.peak_tflops else None,
    }
    if args.vs:
        result["command"] += " --vs transformers"
        result["passes"] = int(passes)
        result["transformers_tokens_per_second"] = b * (lt + t) / statistics.median(theirs)
        result["ratio"] = result["tokens_per_second"] / result["transformers_tokens_per_second"]
    mfu = f", MFU {result['mfu']:.1%}" if result["mfu"] is not None else ""
    print(
        f"{result['command']}\n{result['model']} on {result['devices']} (jax {result['jax']})\n"
        f"compile {compile_seconds:.1f} s; step median {step * 1000:.1f} ms over {args.steps}; "
        f"{result['tokens_per_second']:.0f} tokens/s; "
        f"{result['model_tflops_per_second']:.3f} model TFLOP/s{mfu}"
    )
    if args.vs:
        print(
            f"transformers Llama, {passes} causal passes of the same tokens (AdamW): "
            f"{result['transformers_tokens_per_second']:.0f} tokens/s; "
            f"nclm / transformers = {result['ratio']:.2f}"
        )
    return finish(result, args.json)
