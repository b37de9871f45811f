"""`nclm bench masked`: time to speak N seconds with masked (SoundStorm) decoding, codec included.

    nclm bench masked --preset valle --levels 8 --seconds 30 --iterations 16,1 [--dtype bfloat16]
    nclm bench masked --preset tiny --levels 4 --seconds 2 --prompt-seconds 1 --repeats 1  # CPU

One call of the jitted `masked_generate` (random weights of --preset with Q = --levels) fills
every level of round(seconds x frame rate) frames after a random prompt of --prompt-seconds (all
levels) and random text of TEXT_TOKENS_PER_SECOND x (prompt + target seconds) ids, batch 1, as
`nclm tts --mode masked` does; then the codec decodes the generated frames to audio. The codec is
a random `nclm.codec.config.tiny("dac")` (16 kHz, hop 320: 50 Hz) with Q levels of the preset's
codebook size, or --codec DIR (a saved codec: its rate and codebook size; Q <= its levels).

The LM program is compiled ahead of time (`.lower().compile()`, timed as its compile); the codec
compiles at its first call, whose excess over the median call is its compile time. After one
warm-up, --repeats timed runs of LM then codec (each to host memory); figures are medians:
lm_s, codec_s, total_s = lm_s + codec_s, rtf = total_s / seconds (< 1: faster than real time).
passes: model forward passes per call (16 + Q - 1 for 16,1; a guided pass runs batch 2).
Parameters stay float32 (as `nclm tts` keeps them); --dtype is the compute dtype.
"""

from __future__ import annotations

import argparse
import statistics
import time

from nclm.bench.report import environment, finish

TEXT_TOKENS_PER_SECOND = 12  # English speech: about 12-15 phonemes per second


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=["tiny", "small", "valle"], default="tiny")
    parser.add_argument("--levels", type=int, default=8, help="codebook levels Q (8)")
    parser.add_argument("--seconds", type=float, default=30.0, help="speech to generate (30)")
    parser.add_argument("--prompt-seconds", type=float, default=3.0, help="voice prompt (3)")
    parser.add_argument(
        "--iterations", default="16,1", help="per level, the last repeating (16,1: SoundStorm)"
    )
    parser.add_argument(
        "--guidance", default="ramp_up", help="ramp_up (0 -> 2), ramp_down, constant or none"
    )
    parser.add_argument("--codec", metavar="DIR", help="a saved codec (default: a random tiny DAC)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (3)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument(
        "--conv-kernel",
        type=int,
        default=0,
        metavar="K",
        help="a Conformer convolution with this depthwise kernel in every layer (SoundStorm: 5; "
        "configs/lm/soundstorm.py); 0: none",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")


def _command(args: argparse.Namespace) -> str:
    codec = f" --codec {args.codec}" if args.codec else ""
    return (
        f"nclm bench masked --preset {args.preset} --levels {args.levels} --seconds "
        f"{args.seconds:g} --prompt-seconds {args.prompt_seconds:g} --iterations "
        f"{args.iterations} --guidance {args.guidance}{codec} --repeats {args.repeats} "
        f"--dtype {args.dtype}" + (f" --conv-kernel {args.conv_kernel}" if args.conv_kernel else "")
    )


def _schedule(args: argparse.Namespace):
    from nclm.decode.masked import MaskedSchedule

    try:
        its = tuple(int(n) for n in args.iterations.split(","))
        schedule = MaskedSchedule(iterations=its, guidance=args.guidance)
        schedule.steps(args.levels)
    except ValueError as e:
        raise ValueError(
            f"bench masked: --iterations {args.iterations} --guidance {args.guidance}: {e}"
        ) from None
    return schedule


def _codec(args: argparse.Namespace, codebook_size: int):
    """The codec and the LM's codebook size: a saved one, or a random tiny DAC of Q levels."""
    import dataclasses

    import jax

    from nclm.codec import config as codec_config
    from nclm.codec.interface import NeuralCodec
    from nclm.codec.model import init_codec

    if args.codec:
        codec = NeuralCodec.load(args.codec)
        if args.levels > codec.num_codebooks:
            raise ValueError(
                f"bench masked: --levels {args.levels}, but --codec {args.codec} has "
                f"{codec.num_codebooks} levels"
            )
        return codec, codec.codebook_size
    cfg = codec_config.tiny("dac")
    quantizer = dataclasses.replace(
        cfg.quantizer, num_codebooks=args.levels, codebook_size=codebook_size
    )
    cfg = dataclasses.replace(cfg, name="random_tiny_dac", quantizer=quantizer)
    return NeuralCodec(cfg, init_codec(cfg, jax.random.PRNGKey(args.seed))), codebook_size


def _inputs(cfg, num_prompt: int, num_text: int, num_gen: int, seed: int) -> tuple:
    """(text, text_len, prompt, prompt_len, gen_len), batch 1, random ids."""
    import jax.numpy as jnp
    import numpy as np

    from nclm.text.symbols import BOS_ID, EOS_ID

    rng = np.random.default_rng(seed)
    text = rng.integers(3, cfg.text_vocab_size, (1, num_text))
    text[:, 0], text[:, -1] = BOS_ID, EOS_ID
    prompt = rng.integers(0, cfg.codebook_size, (1, cfg.num_codebooks, num_prompt))
    lengths = (num_text, num_prompt, num_gen)
    text_len, prompt_len, gen_len = (jnp.asarray([n], jnp.int32) for n in lengths)
    return (
        jnp.asarray(text, jnp.int32),
        text_len,
        jnp.asarray(prompt, jnp.int32),
        prompt_len,
        gen_len,
    )


def _measure(compiled, lm_args: tuple, codec, num_gen: int, repeats: int) -> dict:
    """Compile-free timings of LM then codec: the first codec call, the warm-up, the repeats."""
    import numpy as np

    def once() -> tuple[float, float, int]:
        start = time.perf_counter()
        codes, passes = compiled(*lm_args)
        codes = np.asarray(codes)  # waits for the device and copies, as `nclm tts` does
        middle = time.perf_counter()
        codec.decode(codes, np.array([num_gen]))
        return middle - start, time.perf_counter() - middle, int(passes)

    first = once()  # the codec compiles here
    runs = [once() for _ in range(repeats)]
    lm_s = statistics.median(r[0] for r in runs)
    codec_s = statistics.median(r[1] for r in runs)
    return {
        "passes": first[2],
        "codec_compile_s": max(0.0, first[1] - codec_s),
        "lm_s": lm_s,
        "codec_s": codec_s,
        "total_s": lm_s + codec_s,
    }


def _table(r: dict) -> str:
    return "\n".join(
        [
            f"{'seconds':>7} {'frames':>6} {'passes':>6} | {'LM compile s':>12} {'LM s':>8} | "
            f"{'codec compile s':>15} {'codec s':>8} | {'total s':>8} {'RTF':>7}",
            f"{r['seconds']:>7g} {r['frames']:>6} {r['passes']:>6} | "
            f"{r['lm_compile_s']:>12.2f} {r['lm_s']:>8.3f} | {r['codec_compile_s']:>15.2f} "
            f"{r['codec_s']:>8.3f} | {r['total_s']:>8.3f} {r['rtf']:>7.4f}",
        ]
    )


def run(args: argparse.Namespace) -> dict:
    """Runs the benchmark, prints a table and one JSON line, and returns the results."""
    if not (args.seconds > 0 and args.prompt_seconds > 0) or min(args.levels, args.repeats) < 1:
        raise ValueError(
            "bench masked: --seconds and --prompt-seconds must be > 0, --levels and --repeats >= 1"
        )
    schedule = _schedule(args)
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from nclm.decode.masked import masked_generate
    from nclm.lm.config import PRESETS
    from nclm.lm.model import for_decoding, init_lm

    codec, codebook_size = _codec(args, PRESETS[args.preset]().codebook_size)
    cfg = PRESETS[args.preset](
        num_codebooks=args.levels, codebook_size=codebook_size, conv_kernel=args.conv_kernel
    )
    params = nn.meta.unbox(init_lm(cfg, jax.random.PRNGKey(args.seed)))["params"]
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    cfg, params = for_decoding(cfg, params)  # once, as `nclm tts` loads it
    num_gen = max(1, round(args.seconds * codec.frame_rate))
    num_prompt = max(1, round(args.prompt_seconds * codec.frame_rate))
    num_text = max(3, round(TEXT_TOKENS_PER_SECOND * (args.seconds + args.prompt_seconds)))
    inputs = _inputs(cfg, num_prompt, num_text, num_gen, args.seed)
    lm_args = (params, *inputs, jax.random.PRNGKey(args.seed))
    static = {
        "cfg": cfg,
        "num_frames": num_gen,
        "schedule": schedule,
        "dtype": jnp.dtype(args.dtype),
    }
    result = {
        "command": _command(args),
        **environment(),
        "preset": args.preset,
        "num_params": num_params,
        "num_codebooks": cfg.num_codebooks,
        "codebook_size": cfg.codebook_size,
        "codec": codec.codec_id,
        "frame_rate": codec.frame_rate,
        "iterations": list(schedule.steps(cfg.num_codebooks)),
        "guidance": args.guidance,
        "dtype": args.dtype,
        "seconds": args.seconds,
        "prompt_seconds": args.prompt_seconds,
        "frames": num_gen,
        "prompt_frames": num_prompt,
        "text_tokens": num_text,
    }
    print(
        f"{result['command']}\n{args.preset}: {num_params / 1e6:.1f} M params, "
        f"{cfg.num_layers} layers x {cfg.width}, Q = {cfg.num_codebooks} x {cfg.codebook_size}; "
        f"codec {codec.codec_id} at {codec.frame_rate:g} Hz; compute {args.dtype} on "
        f"{result['devices']}, jax {result['jax']}; median of {args.repeats}",
        flush=True,
    )
    start = time.perf_counter()
    compiled = masked_generate.lower(*lm_args, **static).compile()
    result["lm_compile_s"] = time.perf_counter() - start
    result.update(_measure(compiled, lm_args, codec, num_gen, args.repeats))
    result["rtf"] = result["total_s"] / args.seconds
    print(_table(result))
    return finish(result, args.json, print_json=True)
