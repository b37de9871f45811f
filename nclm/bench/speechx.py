"""`nclm bench speechx`: what a SpeechX task costs, and the numbers behind precomputing examples.

    nclm bench speechx                                  # the BENCHMARKS.md row: 10 s, 3 repeats
    nclm bench speechx --seconds 2 --repeats 1 --examples 8 --parts decode,simulate   # quick

Parts (--parts, comma-separated):
- decode: noise suppression of --seconds of speech (a random mixture at 50 Hz) by the LM of
  configs/lm/speechx.py with random weights, decoders only (no codec), compiled once, median of
  --repeats: AR + NAR (one cached AR step per frame, then Q - 1 NAR passes) against masked
  decoding (16, 1 iterations: 16 + Q - 1 passes over the whole [<ns> + mixture | target]).
- simulate: --examples simulated examples (nclm.tasks.simulate, 2-4 s utterances), waveforms
  only, then their codec encode (configs/codec/quickstart.py's codec, random weights, batches
  of 16): what `nclm simulate` pays per example.
- step: one training step of configs/lm/speechx.py on a batch of its smaller bucket, against
  simulating and encoding that batch's examples on the fly (needs simulate).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from nclm.bench.report import environment, finish

PARTS = ("decode", "simulate", "step")
FRAME_RATE = 50  # configs/lm/speechx.py's codec (hop 320 at 16 kHz)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # the repository's, from any cwd


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=10.0, help="speech to enhance (10)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per decoder (3)")
    parser.add_argument("--examples", type=int, default=64, help="examples to simulate (64)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"any of {','.join(PARTS)}")
    parser.add_argument("--config", default=str(CONFIGS / "lm" / "speechx.py"), help="LM config")
    parser.add_argument(
        "--codec-config", default=str(CONFIGS / "codec" / "quickstart.py"), help="codec config"
    )
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    import jax

    jax.block_until_ready(fn())  # compiles
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), runs


def _decode(cfg, lm, seconds: float, repeats: int) -> dict:
    """Seconds to enhance `seconds` of speech with AR + NAR and with masked decoding."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nclm.decode.ar import ar_generate
    from nclm.decode.masked import MaskedSchedule, masked_generate
    from nclm.decode.nar import nar_generate
    from nclm.decode.sampling import SamplingConfig
    from nclm.lm import speechx as sx
    from nclm.lm.model import for_decoding, init_lm

    params = nn.meta.unbox(init_lm(lm, jax.random.PRNGKey(0)))["params"]
    lm, params = for_decoding(lm, params)  # once, as `nclm enhance` loads it
    frames = round(seconds * FRAME_RATE)
    bucket = -(-(frames + 1) // 64) * 64  # the target and its EOS
    rng = np.random.default_rng(0)
    mix = rng.integers(0, lm.codebook_size, (lm.num_codebooks, frames)).astype(np.int32)
    example = sx.layout_example("ns", None, mix[:, :1], lm.num_codebooks, mixture=mix)
    a = sx.stack_prefixes([example], -(-len(example.prefix) // 64) * 64)
    text, text_len = jnp.asarray(a["text"]), jnp.asarray(a["text_len"])
    prefix = sx.Prefix(jnp.asarray(a["prefix_kind"]), jnp.asarray(a["prefix_codes"]))
    prompt = jnp.zeros((1, lm.num_codebooks, 64), jnp.int32)
    start, key = jnp.zeros((1,), jnp.int32), jax.random.PRNGKey(1)
    common = {"prefix": prefix, "cfg": lm}

    def ar_nar():
        level1, n = ar_generate(
            params, text, text_len, prompt[:, 0], start, key, max_new=bucket,
            sampling=SamplingConfig(temperature=0.0), min_new=frames,
            budget=jnp.asarray([frames]), **common,
        )  # fmt: skip
        return nar_generate(params, text, text_len, prompt, start, level1, n, key, **common)

    def masked():
        return masked_generate(
            params, text, text_len, prompt, start, jnp.asarray([frames]), key,
            num_frames=bucket, schedule=MaskedSchedule(guidance="none"), **common,
        )  # fmt: skip

    ar_s, ar_runs = _median_time(ar_nar, repeats)
    masked_s, masked_runs = _median_time(lambda: masked()[0], repeats)
    return {
        "frames": frames,
        "prefix_slots": int(text.shape[1]),
        "ar_nar_s": ar_s,
        "ar_nar_runs": ar_runs,
        "masked_s": masked_s,
        "masked_runs": masked_runs,
        "masked_passes": int(masked()[1]),
        "masked_over_ar_nar": masked_s / ar_s,
    }


def _utterances(count: int, seed: int = 0) -> list:
    """2-4 s harmonic "speech" of four speakers, 20 text ids each."""
    import numpy as np

    from nclm.tasks.simulate import Utterance

    rng = np.random.default_rng(seed)
    corpus = []
    for i in range(count):
        t = np.arange(int(16000 * (2 + 2 * rng.random()))) / 16000
        f0 = 100 + 10 * i
        wav = 0.2 * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
        corpus.append(
            Utterance(wav.astype(np.float32), np.arange(20, dtype=np.int32) + 3, f"s{i % 4}")
        )
    return corpus


def _simulate(examples: int, codec_config: str) -> dict:
    """Per-example seconds of simulating waveforms and of encoding them."""
    import jax

    from nclm.codec.config import CodecConfig
    from nclm.codec.interface import NeuralCodec
    from nclm.codec.model import init_codec
    from nclm.config import load_config
    from nclm.tasks.simulate import SimConfig, simulate
    from nclm.tasks.simulate_shards import encode_examples

    codec_cfg = CodecConfig.from_dict(load_config(codec_config).codec.to_dict())
    codec = NeuralCodec(codec_cfg, init_codec(codec_cfg, jax.random.PRNGKey(0)))
    corpus = _utterances(16)
    start = time.perf_counter()
    sims = [
        simulate(corpus, i, 0, SimConfig(), 16000, codec_cfg.hop_length) for i in range(examples)
    ]
    simulate_s = (time.perf_counter() - start) / examples
    audio_s = sum(len(s.target) + sum(len(p) for p in s.parts.values()) for s in sims) / 16000
    encode_examples(codec, sims, 16)  # compiles every bucket
    start = time.perf_counter()
    encode_examples(codec, sims, 16)
    encode_s = (time.perf_counter() - start) / examples
    return {
        "examples": examples,
        "simulate_ms_per_example": 1e3 * simulate_s,
        "encode_ms_per_example": 1e3 * encode_s,
        "audio_seconds_per_example": audio_s / examples,
        "examples_per_s": 1 / (simulate_s + encode_s),
    }


def _step(cfg, lm, per_example_s: float, repeats: int) -> dict:
    """One multitask training step on a batch of noise-suppression rows of the smaller bucket."""
    import jax
    import numpy as np

    from nclm.lm import speechx as sx
    from nclm.sharding import make_mesh
    from nclm.train.lm_train import build_lm_trainer

    num_prefix, num_frames = cfg.data.text_buckets[0], cfg.data.frame_buckets[0]
    rows = max(1, cfg.data.max_tokens // (num_prefix + num_frames))
    rng = np.random.default_rng(0)
    mix = rng.integers(0, lm.codebook_size, (lm.num_codebooks, num_frames)).astype(np.int32)
    target = mix[:, : num_frames - 10]
    example = sx.layout_example(
        "ns", None, target, lm.num_codebooks, mixture=mix[:, : num_prefix - 16]
    )
    batch = sx.stack_prefixes([example] * rows, num_prefix)
    codes = np.zeros((rows, lm.num_codebooks, num_frames), np.int32)
    codes[:, :, : target.shape[1]] = target
    batch.update(
        codes=codes,
        code_len=np.full(rows, target.shape[1], np.int32),
        task=np.full(rows, sx.TASKS.index("ns"), np.int32),
        target_start=np.zeros(rows, np.int32),
    )
    trainer = build_lm_trainer(cfg, lm, make_mesh({"data": 1}, jax.devices()[:1]), multitask=True)
    state = trainer.init(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(1)

    def step():
        nonlocal state
        state, metrics = trainer.step(state, batch, key)
        return metrics

    step_s, runs = _median_time(step, repeats)
    return {
        "rows": rows,
        "prefix_slots": num_prefix,
        "frames": num_frames,
        "step_s": step_s,
        "step_runs": runs,
        "on_the_fly_s": rows * per_example_s,
        "on_the_fly_over_step": rows * per_example_s / step_s,
    }


def run(args: argparse.Namespace) -> dict:
    from nclm.config import load_config
    from nclm.lm.experiment import lm_config_from

    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown or not parts:
        raise ValueError(f"bench speechx: --parts {args.parts!r}: expected some of {PARTS}")
    if "step" in parts and "simulate" not in parts:
        raise ValueError("bench speechx: --parts step compares against simulate: add simulate")
    if args.seconds <= 0 or args.repeats < 1 or args.examples < 1:
        raise ValueError("bench speechx: --seconds > 0, --repeats >= 1 and --examples >= 1")
    cfg = load_config(args.config)
    lm = lm_config_from(cfg, 64)
    result = {
        "command": f"nclm bench speechx --seconds {args.seconds:g} --repeats {args.repeats} "
        f"--examples {args.examples} --parts {','.join(parts)} --config {args.config} "
        f"--codec-config {args.codec_config}",
        **environment(),
    }
    if "decode" in parts:
        result["decode"] = d = _decode(cfg, lm, args.seconds, args.repeats)
        print(
            f"enhance {args.seconds:g} s ({d['frames']} frames): AR + NAR {d['ar_nar_s']:.2f} s, "
            f"masked ({d['masked_passes']} passes) {d['masked_s']:.2f} s = "
            f"{d['masked_over_ar_nar']:.2f} x AR + NAR"
        )
    if "simulate" in parts:
        result["simulate"] = _simulate(args.examples, args.codec_config)
        s = result["simulate"]
        print(
            f"simulate {s['simulate_ms_per_example']:.1f} ms/example "
            f"({s['audio_seconds_per_example']:.1f} s of audio), encode "
            f"{s['encode_ms_per_example']:.1f} ms/example: {s['examples_per_s']:.1f} examples/s"
        )
    if "step" in parts:
        per_example = 1 / result["simulate"]["examples_per_s"]
        result["step"] = st = _step(cfg, lm, per_example, args.repeats)
        print(
            f"LM step ({st['rows']} rows x ({st['prefix_slots']} + {st['frames']})): "
            f"{1e3 * st['step_s']:.0f} ms; simulating + encoding its examples on the fly: "
            f"{1e3 * st['on_the_fly_s']:.0f} ms = {st['on_the_fly_over_step']:.2f} x the step"
        )
    return finish(result, args.json)
