"""The `nclm` command.

    nclm codec init|info|encode|decode|convert|eval ...    (nclm/codec/cli.py)
    nclm data manifest|synth ...                            (nclm/data/cli.py)
    nclm tokens extract ...                                 (nclm/data/tokens_cli.py)
    nclm train --config FILE.py[:ARG] --workdir DIR [--config.key=value ...]
    nclm tts --lm DIR --codec DIR --text ... --prompt WAV ...  (nclm/tasks/cli.py)
    nclm enhance|remove-speech|extract|edit IN OUT --lm DIR --codec DIR ...  (tasks/speechx_cli.py)
    nclm bench codec|codec-train|lm-train|lm-decode|compile|masked|memory|speechx ... (nclm/bench/)
    nclm eval score ROWS.jsonl --out DIR | valle-list ...         (nclm/eval/cli.py)

Each command group is a function that registers its subcommands (`_command_groups`) through
nclm/cli_args.py: each subcommand sets the defaults `func(args, overrides)` and `command_parser`
(for usage errors), and `accepts_overrides` if it takes a config: `overrides` then holds the
`--config.key=value` items.
Commands validate their inputs before writing anything and write outputs atomically. An expected
failure (a bad file, option or checkpoint: any ValueError or OSError) prints one line,
`nclm: error: <message>`, and exits 2.
jax and the models are imported inside the commands so that `nclm --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from nclm.cli_args import add_command, command_group, set_command


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of the command."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _enable_compilation_cache(setting: str | None) -> str | None:
    """Compiled programs (model init, each encode/decode length bucket, train steps, decoding
    loops) are cached on disk across invocations, per user in ~/.cache/nclm/jax: a second
    `nclm tts` or a resumed run loads them instead of compiling. `--jax-cache DIR` or
    NCLM_JAX_CACHE=DIR (or JAX_COMPILATION_CACHE_DIR) moves it; `off` disables it. Returns the
    directory in use (None when off)."""
    cache = setting or os.environ.get("NCLM_JAX_CACHE") or "~/.cache/nclm/jax"
    if cache == "off":
        os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
        if "jax" in sys.modules:
            import jax

            jax.config.update("jax_enable_compilation_cache", False)
        return None
    cache = os.path.expanduser(cache)
    if setting is None:  # an explicit JAX_COMPILATION_CACHE_DIR wins over the default
        cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", cache)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
    if "jax" in sys.modules:  # jax reads the variables at import: already imported, tell it
        import jax

        jax.config.update("jax_compilation_cache_dir", cache)
    return cache


class _CacheStats:
    """Counts jax's compilation cache events: programs loaded from the cache vs compiled."""

    def __init__(self):
        import jax

        self.requests = self.hits = 0
        jax.monitoring.register_event_listener(self._event)

    def _event(self, event: str, **_) -> None:
        if event == "/jax/compilation_cache/compile_requests_use_cache":
            self.requests += 1
        elif event == "/jax/compilation_cache/cache_hits":
            self.hits += 1

    def report(self, cache: str | None) -> str:
        return (
            f"nclm: compilation cache {cache}: {self.hits} programs loaded, "
            f"{self.requests - self.hits} compiled"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    cache = _enable_compilation_cache(args.jax_cache)
    stats = _CacheStats() if args.cache_stats else None
    command = getattr(args, "command_parser", parser)
    overrides = [a for a in unknown if a.startswith("--config.")]
    rest = [a for a in unknown if not a.startswith("--config.")]
    if overrides and not getattr(args, "accepts_overrides", False):
        rest = unknown
    for item in overrides:
        if "=" not in item and getattr(args, "accepts_overrides", False):
            command.error(f"{item}: expected --config.key=value (with '=')")
    if getattr(args, "intermixed", False):  # IN/OUT around options: nclm edit IN --span S:E OUT
        args.inputs += [a for a in rest if not a.startswith("-")]
        rest = [a for a in rest if a.startswith("-")]
    if rest:
        command.error(f"unrecognized arguments: {' '.join(rest)}")
    if not hasattr(args, "func"):
        command.print_help(sys.stderr)
        sys.exit(2)
    try:
        args.func(args, overrides)
    except (ValueError, OSError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"nclm: error: {message}", file=sys.stderr)
        sys.exit(2)
    finally:
        if stats is not None:
            print(stats.report(cache), file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nclm", description="Neural codec language models in JAX/Flax.")
    parser.add_argument(
        "--jax-cache",
        metavar="DIR|off",
        help="persistent compilation cache (default $NCLM_JAX_CACHE or ~/.cache/nclm/jax)",
    )
    parser.add_argument(
        "--cache-stats",
        action="store_true",
        help="print how many programs came from the compilation cache and how many compiled",
    )
    groups = parser.add_subparsers(title="commands", metavar="COMMAND")
    for register in _command_groups():
        register(groups)
    return parser


# -- nclm data ----------------------------------------------------------------------------------


def _data_commands(groups: argparse._SubParsersAction) -> None:
    from nclm.data import cli as data_cli

    sub = command_group(groups, "data", "build corpora and manifests", "data commands")
    add_command(
        sub,
        "manifest",
        "JSONL manifests (train/valid/test) from an audio tree",
        data_cli.add_manifest_arguments,
        data_cli.run_manifest,
    )
    add_command(
        sub,
        "synth",
        "a local multi-speaker speech corpus (espeak-ng, flite)",
        data_cli.add_synth_arguments,
        data_cli.run_synth,
    )


# -- nclm train ---------------------------------------------------------------------------------


def _train_command(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser(
        "train",
        help="train (or resume) a run from an experiment config",
        description="Restarting the same command resumes from the latest "
        "checkpoint in --workdir; --config WORKDIR/config.json repeats a run.",
    )
    p.add_argument("--config", required=True, metavar="FILE.py[:ARG]|config.json")
    p.add_argument("--workdir", required=True, metavar="DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    set_command(p, _train, overrides=True)


def _train(args: argparse.Namespace, overrides: list[str]) -> None:
    import logging

    from nclm.config import load_config

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("nclm").setLevel(logging.INFO)  # ours; orbax/absl stay at warnings
    cfg = load_config(args.config, overrides)
    if "codec" in cfg and "discriminator" in cfg:
        from nclm.train.codec_train import train_codec as train
    elif "lm" in cfg and "objective" in cfg:
        from nclm.train.lm_train import train_lm as train
    else:
        raise ValueError(
            f"--config {args.config}: not a training experiment (no codec/discriminator or "
            "lm/objective sections)"
        )
    try:
        train(cfg, args.workdir, progress=not args.no_progress)
    except KeyboardInterrupt as e:
        print(f"nclm: {e}; run the same command to resume", file=sys.stderr)
        sys.exit(130)


# -- nclm bench ---------------------------------------------------------------------------------


# name, module (with add_arguments and run), help, whether run takes --config.key=value overrides
_BENCHES = (
    ("codec", "codec", "codec encode/decode throughput vs the PyTorch reference", False),
    ("codec-train", "codec_train", "codec GAN training step time and audio seconds/s", True),
    ("lm-train", "lm_train", "codec LM training step: tokens/s, model FLOPs, MFU", True),
    ("lm-decode", "lm_decode", "codec LM decoding speed: AR steps/s, NAR passes/s", False),
    ("compile", "compile", "compile time and HLO size of the LM decoding programs", False),
    ("masked", "masked", "masked (SoundStorm) TTS speed, codec included: RTF", False),
    ("memory", "memory", "per-device memory of a train step on a target mesh, compiled AOT", True),
    ("speechx", "speechx", "SpeechX: enhance with AR + NAR vs masked, simulation cost", False),
)


def _bench_commands(groups: argparse._SubParsersAction) -> None:
    import importlib

    help_text = "speed benchmarks (figures go to BENCHMARKS.md)"
    sub = command_group(groups, "bench", help_text, "benchmarks", metavar="BENCH")
    for name, module, help_text, overrides in _BENCHES:
        bench = importlib.import_module(f"nclm.bench.{module}")
        add_command(sub, name, help_text, bench.add_arguments, bench.run, overrides)


def _codec_commands(groups: argparse._SubParsersAction) -> None:
    from nclm.codec.cli import register
    from nclm.eval import codec_eval

    help_text = "PESQ, STOI, SI-SDR, mel distance, MCD, codebook usage"
    add_command(register(groups), "eval", help_text, codec_eval.add_arguments, codec_eval.run)


def _command_groups():
    from nclm.data.tokens_cli import register as tokens_commands
    from nclm.eval.cli import register as eval_commands
    from nclm.tasks.cli import register as tts_commands
    from nclm.tasks.speechx_cli import register as speechx_commands

    return (
        _codec_commands,
        _data_commands,
        tokens_commands,
        _train_command,
        tts_commands,
        speechx_commands,
        eval_commands,
        _bench_commands,
    )


if __name__ == "__main__":
    main()
