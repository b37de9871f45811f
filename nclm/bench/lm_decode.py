"""`nclm bench lm-decode`: codec LM decoding speed on random weights of a preset.

    nclm bench lm-decode --preset valle --batch 1 64 --context 384 --steps 256 [--dtype bfloat16]
    nclm bench lm-decode --preset tiny --context 32 --steps 16 --repeats 2      # CPU, seconds
    nclm bench lm-decode --preset small --batch 64 --context 2000 --steps 1 \
        --attention xla blockwise --compile-only     # memory of the dense vs blockwise programs

AR: the jitted `ar_generate` with min_new = budget = --steps, so every row runs every step (a
random model would otherwise stop at a random EOS). One call is a prefill over the context and
--steps cached steps. max_new is --max-new (default --steps): the most codes the call allows,
which sizes the KV cache; `nclm tts` allows 16 per text token where speech takes about 6, so
`--max-new 960 --steps 384` is a 60-token sentence. --cache growing (the default) lets the cache
grow in phases as `nclm tts` does (nclm.decode.ar.cache_allowances); full allocates max_new rows
up front; both run in turn when both are given. The context is text + prompt
tokens, split as in VALL-E inference: a quarter text (transcript and target phonemes), the rest
prompt frames. steps/s = steps / call time (per sequence, prefill included); tokens/s = batch x
steps/s.
NAR: the jitted `nar_generate` on the same text and prompt plus --steps generated frames: Q - 1
bidirectional passes per call over context + steps slots; passes/s and frames/s (batch x steps x
(Q - 1) / call time).

Each program is compiled ahead of time (`.lower().compile()`, timed separately), run once to warm
up, then timed --repeats times to `block_until_ready`; figures are medians. Parameters are
float32 (as `nclm tts` keeps them) unless --weights bfloat16; --dtype is the compute dtype. They
are put in decoding form (nclm.lm.model.for_decoding) once, before anything is timed, as `nclm
tts` does when it loads a checkpoint; the conversion's seconds are printed.
--attention runs the settings
once per attention implementation (nclm.nn.attention), in the same process. Memory: each
program's temporary buffers as XLA plans them (`memory_analysis()`, without running it; the
attention scores live there), and the process's peak resident memory at the end.

--vs transformers: AR only, against a transformers Llama matched in width, depth, heads and
weights per layer (nclm/bench/vs_transformers.py), prefill over the same context + the same
--steps greedy cached steps, both timed in alternation in this process; the ratio is nclm's
steps/s over theirs. Each side's prefill alone (a call of one step) is timed in the same
rotation, so a call splits into prefill + cached steps; the step time is printed next to the
weight-read floor (bytes a step reads: the backbone and AR head weights plus the KV cache at the
middle of the run, over the memory read bandwidth).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import time
from collections.abc import Callable

from nclm.bench.report import environment, finish


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=["tiny", "small", "valle"], default="tiny")
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[1, 64], metavar="B", help="batch sizes (1 64)"
    )
    parser.add_argument(
        "--context", type=int, default=256, help="text + prompt tokens before decoding (256)"
    )
    parser.add_argument("--steps", type=int, default=128, help="AR steps / NAR frames (128)")
    parser.add_argument(
        "--max-new", type=int, help="AR: the codes a call allows, sizing the cache (--steps)"
    )
    parser.add_argument(
        "--cache",
        nargs="+",
        default=["growing"],
        choices=["growing", "full"],
        help="AR KV cache: grown in phases or max_new rows up front, each in turn (growing)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per setting (3)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument(
        "--attention",
        nargs="+",
        default=["auto"],
        choices=["auto", "xla", "blockwise", "cudnn", "splash"],  # nclm.nn.attention
        help="attention implementations to run, each in turn (auto)",
    )
    parser.add_argument(
        "--compile-only", action="store_true", help="compile and report memory, do not run"
    )
    parser.add_argument("--no-nar", action="store_true", help="AR only: skip the NAR passes")
    parser.add_argument(
        "--weights",
        choices=["float32", "bfloat16"],
        default="float32",
        help="parameter dtype (bfloat16 halves the bytes a step reads; float32)",
    )
    parser.add_argument(
        "--vs",
        choices=["transformers"],
        help="AR only, against a matched transformers Llama (torch) in this process, alternating",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")


def _command(args: argparse.Namespace) -> str:
    return (
        f"nclm bench lm-decode --preset {args.preset} --batch {' '.join(map(str, args.batch))} "
        f"--context {args.context} --steps {args.steps} --repeats {args.repeats} "
        f"--dtype {args.dtype} --attention {' '.join(args.attention)}"
        + (f" --max-new {args.max_new}" if args.max_new else "")
        + (f" --cache {' '.join(args.cache)}" if args.cache != ["growing"] else "")
        + (" --compile-only" if args.compile_only else "")
        + (" --no-nar" if args.no_nar else "")
        + (f" --weights {args.weights}" if args.weights != "float32" else "")
        + (f" --vs {args.vs}" if args.vs else "")
    )


def _timed(compiled: Callable, call_args: tuple, call_kwargs: dict, repeats: int) -> list[float]:
    import jax

    jax.block_until_ready(compiled(*call_args, **call_kwargs))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*call_args, **call_kwargs))
        times.append(time.perf_counter() - start)
    return times


def _compile(fn, args: tuple, kwargs: dict, static: dict) -> tuple[Callable, float, float]:
    """-> (compiled, seconds, temporary MB the program needs)."""
    start = time.perf_counter()
    compiled = fn.lower(*args, **kwargs, **static).compile()
    seconds = time.perf_counter() - start
    return compiled, seconds, compiled.memory_analysis().temp_size_in_bytes / 2**20


def _setting(cfg, params, batch: int, args: argparse.Namespace, dtype, cache: str) -> dict:
    """AR and NAR timings at one batch size."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nclm.decode.ar import FIRST_CACHE_FRAMES, ar_generate
    from nclm.decode.nar import nar_generate

    rng = np.random.default_rng(args.seed + batch)
    text, text_len, prompt, prompt_len = _inputs(cfg, batch, args)
    num_text, num_prompt = text.shape[1], prompt.shape[2]
    key = jax.random.PRNGKey(args.seed)
    static = {"cfg": cfg, "dtype": dtype}
    row = {"batch": batch, "text": num_text, "prompt": num_prompt, "steps": args.steps}
    row["attention"], row["cache"] = cfg.attention, cache
    row["max_new"] = args.max_new or args.steps

    ar_args = (params, text, text_len, prompt[:, 0], prompt_len, key)
    ar_kwargs = {"min_new": jnp.int32(args.steps), "budget": jnp.full((batch,), args.steps)}
    first = FIRST_CACHE_FRAMES if cache == "growing" else 0
    compiled, row["ar_compile_s"], row["ar_temp_mb"] = _compile(
        ar_generate, ar_args, ar_kwargs,
        {**static, "max_new": row["max_new"], "first_cache_frames": first},
    )  # fmt: skip
    if not args.compile_only:
        times = _timed(compiled, ar_args, ar_kwargs, args.repeats)
        row["ar_call_s"] = statistics.median(times)
        row["ar_steps_per_s"] = args.steps / row["ar_call_s"]
        row["ar_tokens_per_s"] = batch * row["ar_steps_per_s"]

    passes = cfg.num_codebooks - 1
    if passes and not args.no_nar:
        level1 = jnp.asarray(rng.integers(0, cfg.codebook_size, (batch, args.steps)), jnp.int32)
        gen_len = jnp.full((batch,), args.steps, jnp.int32)
        nar_args = (params, text, text_len, prompt, prompt_len, level1, gen_len, key)
        compiled, row["nar_compile_s"], row["nar_temp_mb"] = _compile(
            nar_generate, nar_args, {}, static
        )
        if not args.compile_only:
            row["nar_call_s"] = statistics.median(_timed(compiled, nar_args, {}, args.repeats))
            row["nar_passes_per_s"] = passes / row["nar_call_s"]
            row["nar_frames_per_s"] = batch * args.steps * passes / row["nar_call_s"]
    return row


def _inputs(cfg, batch: int, args: argparse.Namespace):
    """Random text and prompts: (text, text_len, prompt[B, Q, P], prompt_len)."""
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(args.seed + batch)
    num_text = max(1, args.context // 4)
    num_prompt = max(1, args.context - num_text)
    text = jnp.asarray(rng.integers(3, cfg.text_vocab_size, (batch, num_text)), jnp.int32)
    prompt = rng.integers(0, cfg.codebook_size, (batch, cfg.num_codebooks, num_prompt))
    return (
        text,
        jnp.full((batch,), num_text, jnp.int32),
        jnp.asarray(prompt, jnp.int32),
        jnp.full((batch,), num_prompt, jnp.int32),
    )


def _versus(cfg, params, batch: int, args: argparse.Namespace, dtype, bandwidth: float) -> dict:
    """AR prefill + --steps at one batch size, nclm and a matched transformers Llama timed in
    alternation (nclm.bench.vs_transformers), with the weight-read floor."""
    import jax
    import torch

    from nclm.bench import vs_transformers as ref
    from nclm.decode.ar import ar_generate

    text, text_len, prompt, prompt_len = _inputs(cfg, batch, args)
    key = jax.random.PRNGKey(args.seed)
    ar_args = (params, text, text_len, prompt[:, 0], prompt_len, key)
    ar_kwargs = {"min_new": jax.numpy.int32(args.steps)}
    static = {"cfg": cfg, "dtype": dtype, "max_new": args.steps}
    compiled, compile_s, _ = _compile(ar_generate, ar_args, ar_kwargs, static)
    # the prefill alone (and the first token), to split a call into prefill + cached steps
    one = {"min_new": jax.numpy.int32(1)}
    prefill, _, _ = _compile(ar_generate, ar_args, one, {**static, "max_new": 1})
    length = text.shape[1] + 1 + prompt.shape[2]
    llama = ref.llama_like(cfg, length + args.steps + 1, args.weights)
    ids = torch.randint(0, cfg.codebook_size, (batch, length), generator=torch.Generator())
    jax.block_until_ready(compiled(*ar_args, **ar_kwargs))  # warm-up both
    jax.block_until_ready(prefill(*ar_args, **one))
    ref.llama_decode(llama, ids, args.steps)
    ours, theirs, ours_prefill, theirs_prefill = [], [], [], []
    for _ in range(args.repeats):
        ours += _timed_once(lambda: compiled(*ar_args, **ar_kwargs))
        theirs += _timed_once(lambda: ref.llama_decode(llama, ids, args.steps))
        ours_prefill += _timed_once(lambda: prefill(*ar_args, **one))
        theirs_prefill += _timed_once(lambda: ref.llama_decode(llama, ids, 1))
    stack = params["backbone" if cfg.shared_backbone else "ar_backbone"]
    weights = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(stack))
    weights += params["ar_head"].size * params["ar_head"].dtype.itemsize
    head_dim = cfg.width // cfg.num_heads
    kv = 2 * cfg.num_layers * batch * (length + args.steps / 2) * cfg.num_kv_heads * head_dim
    step_bytes = weights + kv * jax.numpy.dtype(dtype).itemsize
    row = {"batch": batch, "context": length, "steps": args.steps, "ar_compile_s": compile_s}
    row["nclm_steps_per_s"] = args.steps / statistics.median(ours)
    row["transformers_steps_per_s"] = args.steps / statistics.median(theirs)
    row["ratio"] = row["nclm_steps_per_s"] / row["transformers_steps_per_s"]
    for side, calls, prefills in (("nclm", ours, ours_prefill), ("transformers", theirs,
                                  theirs_prefill)):  # fmt: skip
        row[f"{side}_prefill_s"] = statistics.median(prefills)
        steps = max(args.steps - 1, 1)
        row[f"{side}_step_ms"] = 1e3 * (statistics.median(calls) - row[f"{side}_prefill_s"]) / steps
    row["bytes_per_step"] = step_bytes
    row["floor_steps_per_s"] = bandwidth / step_bytes
    row["floor_step_ms"] = 1e3 / row["floor_steps_per_s"]
    row["llama_params"] = sum(p.numel() for p in llama.parameters())
    row["llama_step_params"] = ref.backbone_params(llama)
    return row


def _timed_once(call: Callable) -> list[float]:
    import jax

    start = time.perf_counter()
    jax.block_until_ready(call())
    return [time.perf_counter() - start]


def _versus_table(rows: list[dict]) -> str:
    out = [
        f"{'':>19} | {'whole call (prefill included)':^34} | {'prefill s':^15} | "
        f"{'cached step ms':^24} |",
        f"{'batch':>5} {'context':>7} {'steps':>5} | {'nclm steps/s':>12} "
        f"{'transformers':>12} {'ratio':>6} | {'nclm':>7} {'transf.':>7} | {'nclm':>7} "
        f"{'transf.':>7} {'floor':>8} | {'MB/step':>8}",
    ]
    for r in rows:
        out.append(
            f"{r['batch']:>5} {r['context']:>7} {r['steps']:>5} | "
            f"{r['nclm_steps_per_s']:>12.2f} {r['transformers_steps_per_s']:>12.2f} "
            f"{r['ratio']:>6.2f} | {r['nclm_prefill_s']:>7.3f} {r['transformers_prefill_s']:>7.3f} "
            f"| {r['nclm_step_ms']:>7.1f} {r['transformers_step_ms']:>7.1f} "
            f"{r['floor_step_ms']:>8.1f} | {r['bytes_per_step'] / 1e6:>8.1f}"
        )
    return "\n".join(out)


def _fmt(r: dict, key: str, spec: str) -> str:
    width = int(spec.split(".")[0])
    return format(r[key], spec) if key in r else f"{'-':>{width}}"


def _table(rows: list[dict]) -> str:
    out = [
        f"{'attention':>9} {'cache':>7} {'batch':>5} {'context':>7} {'steps':>5} "
        f"{'max_new':>7} | {'AR compile s':>12} "
        f"{'temp MB':>8} {'call s':>8} {'steps/s':>8} {'tokens/s':>9} | {'NAR compile s':>13} "
        f"{'temp MB':>8} {'call s':>8} {'passes/s':>8} {'frames/s':>9}"
    ]
    for r in rows:
        ar = " ".join(
            _fmt(r, k, f)
            for k, f in [("ar_compile_s", "12.2f"), ("ar_temp_mb", "8.0f"), ("ar_call_s", "8.4f"),
                         ("ar_steps_per_s", "8.1f"), ("ar_tokens_per_s", "9.0f")]
        )  # fmt: skip
        nar = (
            " ".join(
                _fmt(r, k, f)
                for k, f in [
                    ("nar_compile_s", "13.2f"),
                    ("nar_temp_mb", "8.0f"),
                    ("nar_call_s", "8.4f"),
                    ("nar_passes_per_s", "8.1f"),
                    ("nar_frames_per_s", "9.0f"),
                ]
            )  # fmt: skip
            if "nar_compile_s" in r
            else f"{'not run':>13}"
        )
        out.append(
            f"{r['attention']:>9} {r['cache']:>7} {r['batch']:>5} {r['text'] + r['prompt']:>7} "
            f"{r['steps']:>5} {r['max_new']:>7} | "
            f"{ar} | {nar}"
        )
    return "\n".join(out)


def run(args: argparse.Namespace) -> dict:
    """Runs the benchmark, prints a table and one JSON line, and returns the results."""
    if args.steps < 1 or args.context < 2 or args.repeats < 1 or min(args.batch) < 1:
        raise ValueError(
            "bench lm-decode: --steps, --repeats and every --batch must be >= 1; --context >= 2"
        )
    if args.max_new is not None and args.max_new < args.steps:
        raise ValueError(f"bench lm-decode: --max-new {args.max_new} is below --steps {args.steps}")
    if args.vs and (args.max_new or args.cache != ["growing"]):
        raise ValueError("bench lm-decode: --vs times max_new = --steps; drop --max-new/--cache")
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from nclm.lm.config import PRESETS
    from nclm.lm.model import for_decoding, init_lm

    cfg = PRESETS[args.preset]()
    params = nn.meta.unbox(init_lm(cfg, jax.random.PRNGKey(args.seed)))["params"]
    params = jax.tree_util.tree_map(lambda x: x.astype(args.weights), params)
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    start = time.perf_counter()  # once, as `nclm tts` converts once per load
    cfg, params = jax.block_until_ready(for_decoding(cfg, params))
    convert_s = time.perf_counter() - start
    dtype = jnp.dtype(args.dtype)
    result = {
        "command": _command(args),
        **environment(),
        "preset": args.preset,
        "num_params": num_params,
        "num_codebooks": cfg.num_codebooks,
        "dtype": args.dtype,
        "weights": args.weights,
        "decoding_form_s": convert_s,
        "results": [],
    }
    print(
        f"{result['command']}\n{args.preset}: {num_params / 1e6:.1f} M params, "
        f"{cfg.num_layers} layers x {cfg.width}, Q = {cfg.num_codebooks}; compute {args.dtype} "
        f"on {result['devices']}, jax {result['jax']}; median of {args.repeats}; weights in "
        f"decoding form once, as `nclm tts` loads them ({convert_s:.2f} s, not in the timings)",
        flush=True,
    )
    if args.vs:
        from nclm.bench.vs_transformers import read_bandwidth

        result["read_bandwidth_gb_s"] = read_bandwidth() / 1e9
        print(
            "memory read bandwidth (NumPy sums over 200 MB, all CPUs): "
            f"{result['read_bandwidth_gb_s']:.1f} GB/s"
        )
    for batch in sorted(set(args.batch)):
        if args.vs:  # AR against transformers, with the default attention
            bandwidth = result["read_bandwidth_gb_s"] * 1e9
            result["results"].append(_versus(cfg, params, batch, args, dtype, bandwidth))
            continue
        for attention in args.attention:
            cfg_attention = dataclasses.replace(cfg, attention=attention)
            for cache in args.cache:
                row = _setting(cfg_attention, params, batch, args, dtype, cache)
                result["results"].append(row)
    # Linux reports kilobytes
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print((_versus_table if args.vs else _table)(result["results"]))
    print(f"peak resident memory of this process: {result['peak_rss_mb']:.0f} MB")
    return finish(result, args.json, print_json=True)
