"""`nclm bench codec`: encode/decode throughput of nclm against transformers, same weights.

    python -m nclm.bench.codec --model encodec_24khz --seconds 5 --batch 16 --repeats 5 [--json OUT]

Both implementations get the same config, the same weights (a transformers model with random
weights, saved and converted with `convert_transformers_dir`) and the same inputs. Throughput is
x real time: seconds of audio processed per wall-clock second.

    nclm   the jitted `Codec.apply(..., method="encode" | "decode")` on fixed-shape device arrays,
           after a warm-up (compile) call, timed to `jax.block_until_ready`: the model's compute,
           without `NeuralCodec`'s host-side padding and copies.
    torch  the transformers model's `encode` / `decode`, eval mode, under `torch.inference_mode`,
           at torch's default thread count unless `--torch-threads` says otherwise (printed).
           On a shared, oversubscribed machine torch's OpenMP threads slow down far more than
           XLA's pool; the load average is printed so such runs can be recognised.

The two are interleaved (nclm, torch, nclm, torch, ... `--repeats` times per setting) because a
shared machine drifts; each figure is the median, and the ratio is nclm / torch of the medians.
`encodec_24khz_vocos` encodes with that EnCodec and decodes with Vocos-EnCodec at its published
sizes (the torch side: the `vocos` package's backbone and iSTFT head on transformers' quantized
latent, nclm/bench/vocos_reference.py), converted as `nclm codec convert --from vocos` does.
EnCodec (24 kHz, 32 levels) runs at 6 kbps: encode with bandwidth 6.0, decode 8 levels. DAC
(16 kHz, hop 512) uses all 9 levels. Without torch/transformers only nclm is timed, on random
weights of the same config.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nclm.bench.report import finish

if TYPE_CHECKING:  # jax and the models load inside the commands: `nclm --help` stays fast
    from nclm.codec.config import CodecConfig


@dataclass(frozen=True)
class BenchModel:
    family: str  # "encodec" | "dac"
    levels: int  # levels encoded and decoded
    bandwidth: float | None  # EnCodec's `bandwidth` (kbps) that selects `levels`


MODELS = {
    "encodec_24khz": BenchModel("encodec", 8, 6.0),
    "dac_16khz": BenchModel("dac", 9, None),
    # EnCodec's encoder, Vocos-EnCodec's decoder (nclm codec convert --from vocos)
    "encodec_24khz_vocos": BenchModel("vocos", 8, 6.0),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="encodec_24khz",
        help="transformers default config: EncodecConfig() or DacConfig(); encodec_24khz_vocos: "
        "EncodecConfig() encoding, the published Vocos-EnCodec sizes decoding (reference: the "
        "vocos package)",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length (s)")
    parser.add_argument("--batch", type=int, default=16, help="batched size (batch 1 always runs)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timings per setting")
    parser.add_argument(
        "--torch-threads",
        type=int,
        metavar="N",
        help="torch.set_num_threads(N); default: leave torch's own default (printed)",
    )
    parser.add_argument(
        "--lengths",
        action="store_true",
        help="also time nclm with per-row valid lengths (NeuralCodec's masking), interleaved",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")


# -- the two implementations --------------------------------------------------------------------


def _import_reference(family: str):
    """(torch, transformers), or the one-line reason they cannot be used."""
    try:
        import torch
        import transformers
    except ImportError as e:
        return None, f"reference unavailable ({e}); install nclm[parity]. Timing nclm only."
    if family == "vocos":
        from nclm.bench.vocos_reference import vocos_available

        if not vocos_available():
            return None, (
                'reference unavailable (no vocos): pip install --no-deps "vocos==0.1.0". '
                "Timing nclm only."
            )
    return (torch, transformers), ""


def _randomise_encodec_codebooks(torch, model) -> None:
    """transformers initialises EnCodec codebooks to zeros, which makes every code 0. Level 1 gets
    encoder frames of a test signal, deeper levels noise at the residual's scale (as the parity
    tests do), so the nearest-code search does real work."""
    with torch.inference_mode():
        latents = model.encoder(torch.from_numpy(speech_like(2, 8000, seed=99))[:, None])
        frames = latents.permute(0, 2, 1).reshape(-1, latents.shape[1])
        spread = float(frames.std(dim=0).mean())
        for q, layer in enumerate(model.quantizer.layers):
            if q == 0:
                pick = torch.randint(0, len(frames), (layer.codebook.embed.shape[0],))
                layer.codebook.embed.copy_(frames[pick])
            else:
                layer.codebook.embed.normal_(0.0, spread / q)


def _reference_model(ref, family: str) -> tuple[Any, CodecConfig, dict]:
    """A random-weight transformers model and its nclm conversion."""
    from nclm.codec.convert import convert_transformers_dir

    torch, transformers = ref
    transformers.utils.logging.disable_progress_bar()  # save_pretrained's bar would break the table
    torch.manual_seed(0)
    if family in ("encodec", "vocos"):
        model = transformers.EncodecModel(transformers.EncodecConfig()).eval()
        _randomise_encodec_codebooks(torch, model)
    else:
        model = transformers.DacModel(transformers.DacConfig()).eval()
    if family == "vocos":  # the torch side: EnCodec encoding, the published Vocos decoding
        from nclm.bench import vocos_reference

        backbone, head = vocos_reference.random_vocos(torch)
        cfg, variables = vocos_reference.converted(model, backbone, head)
        return (model, backbone, head), cfg, variables
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        cfg, variables = convert_transformers_dir(tmp)
    return model, cfg, variables


def _nclm_only_model(name: str) -> tuple[CodecConfig, dict]:
    """The same configs as transformers' defaults, random nclm weights."""
    import jax

    from nclm.codec.config import CodecConfig, DACNetConfig, QuantizerConfig, encodec_24khz
    from nclm.codec.model import init_codec

    if MODELS[name].family == "encodec":
        cfg = encodec_24khz(32)
    elif MODELS[name].family == "vocos":  # as `nclm codec convert --from vocos` makes it
        from nclm.bench.vocos_reference import PUBLISHED
        from nclm.codec.convert_vocos import vocos_codec_config

        parts = {part: args for part, (_, args) in PUBLISHED.items()}
        cfg = vocos_codec_config(parts, encodec_24khz(32), "vocos-encodec-24khz")
    else:
        cfg = CodecConfig(name, 16000, DACNetConfig(), QuantizerConfig("factorized", 9, 1024, 8))
    return cfg, init_codec(cfg, jax.random.PRNGKey(0))


def _nclm_ops(
    cfg: CodecConfig, variables: dict, levels: int, lengths: bool = False
) -> dict[str, Callable]:
    """With `lengths`, every row carries its valid length (here the whole row) as `NeuralCodec`
    passes it, so the per-row masking that keeps bucket padding out of each clip is timed."""
    import jax
    import jax.numpy as jnp

    from nclm.codec.model import Codec

    model = Codec(cfg)
    variables = jax.device_put(variables)

    def rows(x, axis):
        return jnp.full(x.shape[:1], x.shape[axis], jnp.int32) if lengths else None

    encode = jax.jit(lambda v, x: model.apply(v, x, levels, rows(x, 1), method="encode"))
    decode = jax.jit(lambda v, c: model.apply(v, c, rows(c, 2), method="decode"))
    return {
        "encode": lambda x: jax.block_until_ready(encode(variables, x)),
        "decode": lambda c: jax.block_until_ready(decode(variables, c)),
    }


def _torch_ops(torch, model, bench: BenchModel) -> dict[str, Callable]:
    """Public transformers API; inputs are [B, 1, S] audio and codes in the model's own layout."""

    def inference(fn):
        def call(x):
            with torch.inference_mode():
                return fn(x)

        return call

    if bench.family == "vocos":
        from nclm.bench.vocos_reference import BANDWIDTHS, reference_decode

        model, backbone, head = model
        row = BANDWIDTHS.index(bench.bandwidth)
        encode = lambda x: model.encode(x, bandwidth=bench.bandwidth).audio_codes  # [1, B, Q, T]
        decode = lambda c: reference_decode(torch, model, backbone, head, c, row)  # c: [B, Q, T]
    elif bench.family == "encodec":
        encode = lambda x: model.encode(x, bandwidth=bench.bandwidth).audio_codes  # [1, B, Q, T]
        decode = lambda c: model.decode(c, [None]).audio_values
    else:
        encode = lambda x: model.encode(x).audio_codes  # [B, Q, T]
        decode = lambda c: model.decode(audio_codes=c).audio_values
    return {"encode": inference(encode), "decode": inference(decode)}


# -- measuring ------------------------------------------------------------------------------------


def speech_like(batch: int, samples: int, seed: int = 0) -> np.ndarray:
    """Speech-like input: harmonics with vibrato plus a little noise, float32[B, S]."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    f0 = 120 + 30 * rng.random((batch, 1))
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t)), axis=1) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2
    return (x + 0.01 * rng.standard_normal((batch, samples))).astype(np.float32)


def _seconds(fn: Callable, arg) -> float:
    start = time.perf_counter()
    fn(arg)
    return time.perf_counter() - start


def _interleaved(
    ops: dict[str, Callable], inputs: dict[str, Any], repeats: int
) -> dict[str, list[float]]:
    """Times ops[impl](inputs[impl]) round-robin, `repeats` rounds (callers have warmed up)."""
    times: dict[str, list[float]] = {impl: [] for impl in ops}
    for _ in range(repeats):
        for impl, fn in ops.items():
            times[impl].append(_seconds(fn, inputs[impl]))
    return times


def _setting_inputs(torch, x: np.ndarray, ops: dict, family: str):
    """Device/tensor inputs for both ops of every implementation; also warms everything up.
    Decoding uses nclm's codes for both, so both decode the same thing. Returns (inputs, codes
    agreement between the implementations or None)."""
    import jax
    import jax.numpy as jnp

    inputs = {"encode": {"nclm": jax.device_put(jnp.asarray(x))}, "decode": {}}
    codes = np.asarray(ops["nclm"]["encode"](inputs["encode"]["nclm"]))  # [B, Q, T]; compiles
    inputs["decode"]["nclm"] = jax.device_put(jnp.asarray(codes))
    ops["nclm"]["decode"](inputs["decode"]["nclm"])
    if "nclm_lengths" in ops:  # the same arrays; warm up (compile) its programs too
        for op in ("encode", "decode"):
            inputs[op]["nclm_lengths"] = inputs[op]["nclm"]
            ops["nclm_lengths"][op](inputs[op]["nclm"])
    agree = None
    if "torch" in ops:
        inputs["encode"]["torch"] = torch.from_numpy(x)[:, None]
        ref_codes = ops["torch"]["encode"](inputs["encode"]["torch"]).numpy()
        ref_codes = ref_codes[0] if family in ("encodec", "vocos") else ref_codes
        agree = float(np.mean(ref_codes == codes)) if ref_codes.shape == codes.shape else 0.0
        c = torch.from_numpy(np.array(codes)).long()
        inputs["decode"]["torch"] = c[None] if family == "encodec" else c
        ops["torch"]["decode"](inputs["decode"]["torch"])
    return inputs, agree


# -- reporting ------------------------------------------------------------------------------------


def _command(args: argparse.Namespace) -> str:
    threads = f" --torch-threads {args.torch_threads}" if args.torch_threads else ""
    return (
        f"nclm bench codec --model {args.model} --seconds {args.seconds:g} "
        f"--batch {args.batch} --repeats {args.repeats}{threads}"
        + (" --lengths" if args.lengths else "")
    )


def _environment(ref) -> dict:
    import jax

    devices = jax.devices()
    env = {
        "date": datetime.date.today().isoformat(),
        "cpu": _cpu_name(),
        "nproc": os.cpu_count(),
        "load_average": _load_average(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})",
    }
    if ref:
        torch, transformers = ref
        env.update(
            torch=torch.__version__,
            transformers=transformers.__version__,
            torch_threads=torch.get_num_threads(),
            torch_interop_threads=torch.get_num_interop_threads(),
        )
    return env


def _load_average() -> list[float] | None:
    """1/5/15-minute load: how busy the (shared) machine was, to judge the noise."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _header(result: dict) -> str:
    env, c = result["env"], result["config"]
    lines = [
        f"nclm bench codec: {result['model']} ({c['sample_rate']} Hz, hop {c['hop_length']}, "
        f"{c['num_params'] / 1e6:.1f} M params, {c['num_codebooks']} levels; "
        f"benchmarked at {c['levels']} levels = {c['kbps']:g} kbps)",
        f"clip {result['seconds']:g} s, batch {' and '.join(map(str, result['batches']))}, "
        f"repeats {result['repeats']} (interleaved nclm/torch, median)",
        f"jax {env['jax']} backend {env['jax_backend']}, devices {env['jax_devices']}",
    ]
    if "torch" in env:
        lines.append(
            f"torch {env['torch']} (threads {env['torch_threads']}, interop "
            f"{env['torch_interop_threads']}), transformers {env['transformers']}"
        )
    else:
        lines.append(result["reference"])
    lines += [
        f"cpu: {env['cpu']}, {env['nproc']} cores, load average {env['load_average']}; "
        f"python {env['python']}; {env['date']}",
        f"command: {result['command']}",
    ]
    return "\n".join(lines)


def _table(rows: list[dict]) -> str:
    out = [
        f"{'op':<7} {'batch':>5} {'audio s':>8} {'nclm xRT':>9} {'torch xRT':>10} "
        f"{'nclm/torch':>10}"
    ]
    for r in rows:
        torch_x = "n/a" if r["torch_xrt"] is None else f"{r['torch_xrt']:.1f}"
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}"
        cost = "" if r["lengths_cost"] is None else f" lengths/none time {r['lengths_cost']:.3f}"
        out.append(
            f"{r['op']:<7} {r['batch']:>5} {r['audio_seconds']:>8.1f} "
            f"{r['nclm_xrt']:>9.1f} {torch_x:>10} {ratio:>10}{cost}"
        )
    return "\n".join(out)


# -- entry point ----------------------------------------------------------------------------------


def _row(op: str, batch: int, audio_seconds: float, times: dict[str, list[float]]) -> dict:
    xrt = {impl: audio_seconds / statistics.median(t) for impl, t in times.items()}
    torch_xrt = xrt.get("torch")
    best = {f"{impl}_xrt_best": audio_seconds / min(t) for impl, t in times.items()}
    return {
        "op": op,
        "batch": batch,
        "audio_seconds": audio_seconds,
        "nclm_xrt": xrt["nclm"],
        "torch_xrt": torch_xrt,
        "ratio": None if torch_xrt is None else xrt["nclm"] / torch_xrt,
        # time with per-row lengths / time without, if measured
        "lengths_cost": xrt["nclm"] / xrt["nclm_lengths"] if "nclm_lengths" in xrt else None,
        **best,
        "seconds": times,
    }


def run(args: argparse.Namespace) -> dict:
    """Runs the benchmark, prints the table and returns the results (see the module docstring)."""
    from nclm.codec.model import num_params

    bench = MODELS[args.model]
    if args.seconds <= 0 or args.batch < 1 or args.repeats < 1 or (args.torch_threads or 1) < 1:
        raise ValueError(
            "bench codec: --seconds must be > 0; --batch, --repeats, --torch-threads >= 1"
        )
    ref, unavailable = _import_reference(bench.family)
    if ref:
        if args.torch_threads:
            ref[0].set_num_threads(args.torch_threads)
        torch_model, cfg, variables = _reference_model(ref, bench.family)
    else:
        torch_model, (cfg, variables) = None, _nclm_only_model(args.model)
    ops = {"nclm": _nclm_ops(cfg, variables, bench.levels)}
    if args.lengths:
        ops["nclm_lengths"] = _nclm_ops(cfg, variables, bench.levels, lengths=True)
    if ref:
        ops["torch"] = _torch_ops(ref[0], torch_model, bench)
    samples = round(args.seconds * cfg.sample_rate)
    batches = sorted({1, args.batch})
    result = {
        "model": args.model,
        "command": _command(args),
        "seconds": args.seconds,
        "batches": batches,
        "repeats": args.repeats,
        "reference": (
            ("transformers + vocos" if bench.family == "vocos" else "transformers")
            if ref
            else unavailable
        ),
        "config": {
            "sample_rate": cfg.sample_rate,
            "hop_length": cfg.hop_length,
            "num_codebooks": cfg.num_codebooks,
            "levels": bench.levels,
            "kbps": cfg.bitrate(bench.levels) / 1000,
            "num_params": num_params(variables),
        },
        "env": _environment(ref),
        "results": [],
        "codes_agree": {},
    }
    print(_header(result), flush=True)
    for batch in batches:
        x = speech_like(batch, samples, seed=batch)
        inputs, agree = _setting_inputs(ref and ref[0], x, ops, bench.family)
        result["codes_agree"][str(batch)] = agree
        frames = inputs["decode"]["nclm"].shape[-1]
        durations = {
            "encode": samples / cfg.sample_rate,
            "decode": frames * cfg.hop_length / cfg.sample_rate,
        }
        for op in ("encode", "decode"):
            op_ops = {impl: impl_ops[op] for impl, impl_ops in ops.items()}
            times = _interleaved(op_ops, inputs[op], args.repeats)
            result["results"].append(_row(op, batch, batch * durations[op], times))
            print(f"  measured {op} batch {batch}", flush=True)  # progress: settings take minutes
    result["env"]["load_average_end"] = _load_average()
    print(_table(result["results"]), flush=True)
    print(f"load average at the end: {result['env']['load_average_end']}")
    if ref:
        agree = ", ".join(f"batch {b}: {a:.1%}" for b, a in result["codes_agree"].items())
        print(f"codes identical between nclm and torch: {agree}")
    return finish(result, args.json)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m nclm.bench.codec", description=__doc__.split("\n", 1)[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
