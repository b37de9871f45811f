"""`nclm bench codec-train`: the codec GAN training step's time and throughput for a config.

    nclm bench codec-train --config configs/codec/quickstart.py --steps 20 [--json OUT]

Builds the run's trainer on all devices (the config's mesh and batch size, its crop length),
compiles the step (timed separately), then times `--steps` steps on one fixed batch of voiced
synthetic audio, each to `block_until_ready`. Reports the median step time and audio seconds
trained per wall-clock second (batch x crop / step time). No data pipeline: this is the step's
own cost; the loop's throughput, data included, is logged by `nclm train` as perf/* metrics.
"""

from __future__ import annotations

import argparse
import statistics

from nclm.bench.report import environment, finish
from nclm.bench.step_timing import time_train_step


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE.py[:ARG]|config.json")
    parser.add_argument("--steps", type=int, default=20, help="timed steps after compiling (20)")
    parser.add_argument("--json", metavar="OUT", help="also write the result as JSON")


def run(args: argparse.Namespace, overrides: list[str] = ()) -> dict:
    import jax
    import numpy as np

    from nclm.codec.experiment import codec_config_from
    from nclm.config import load_config
    from nclm.sharding import batch_sharding, make_mesh
    from nclm.train.codec_train import build_codec_trainer, segment_samples

    cfg = load_config(args.config, list(overrides))
    codec_cfg = codec_config_from(cfg)
    mesh = make_mesh(dict(cfg.mesh))
    segment = segment_samples(cfg, codec_cfg)
    batch_size = int(cfg.data.batch_size)
    rules = tuple(tuple(r) for r in cfg.sharding_rules)
    trainer = build_codec_trainer(cfg, mesh, segment, batch_size)

    t = np.arange(segment) / codec_cfg.sample_rate
    f0 = 100 + 60 * np.random.default_rng(0).random((batch_size, 1))
    wav = (0.2 * np.sin(2 * np.pi * f0 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(
        np.float32
    )
    sharding = batch_sharding(mesh, 2, rules)
    batch = {
        "wav": jax.device_put(wav, sharding),
        "mask": jax.device_put(np.ones_like(wav), sharding),
    }
    key = jax.random.PRNGKey(0)
    compile_seconds, times, _ = time_train_step(
        trainer.step, trainer.init(key), batch, key, args.steps
    )
    step_seconds = statistics.median(times)
    audio_seconds = batch_size * segment / codec_cfg.sample_rate
    result = {
        "command": "nclm bench codec-train "
        + " ".join([f"--config {args.config}", f"--steps {args.steps}", *overrides]),
        "codec": codec_cfg.name,
        **environment(),
        "batch": batch_size,
        "crop_seconds": segment / codec_cfg.sample_rate,
        "compile_seconds": compile_seconds,
        "step_seconds_median": step_seconds,
        "step_seconds_min": min(times),
        "audio_seconds_per_second": audio_seconds / step_seconds,
    }
    print(
        f"{result['command']}\n{result['codec']} on {result['devices']} (jax {result['jax']}), "
        f"batch {batch_size} x {result['crop_seconds']:g} s\n"
        f"compile {compile_seconds:.1f} s; step median {step_seconds * 1000:.0f} ms "
        f"(min {min(times) * 1000:.0f} ms) over {args.steps} steps; "
        f"{result['audio_seconds_per_second']:.2f} audio s/s"
    )
    return finish(result, args.json)
