"""`nclm bench codec` runs end to end on a tiny setting. Speed lives in BENCHMARKS.md, not here."""

import argparse
import json
import math
from pathlib import Path

import flax.linen as nn
import jax
import pytest

from nclm.bench import codec as bench_codec

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _args(argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_codec.add_arguments(parser)
    return parser.parse_args(argv.split())


@pytest.mark.needs("torch", "transformers")
def test_bench_codec_tiny(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = _args(f"--model encodec_24khz --seconds 0.5 --batch 2 --repeats 1 --json {out}")
    result = bench_codec.run(args)

    rows = {(r["op"], r["batch"]): r for r in result["results"]}
    assert set(rows) == {(op, b) for op in ("encode", "decode") for b in (1, 2)}
    for r in rows.values():
        assert r["nclm_xrt"] > 0 and r["torch_xrt"] > 0
        assert r["ratio"] == pytest.approx(r["nclm_xrt"] / r["torch_xrt"])
    assert rows["encode", 2]["audio_seconds"] == pytest.approx(1.0)
    # same weights: the benchmark compares two implementations of one model
    assert all(a == 1.0 for a in result["codes_agree"].values())
    assert (result["config"]["levels"], result["config"]["kbps"]) == (8, 6.0)
    assert json.loads(out.read_text())["command"] == result["command"]
    printed = capsys.readouterr().out
    assert "nclm/torch" in printed and result["command"] in printed


@pytest.mark.needs("torch", "transformers", "vocos")
def test_bench_codec_vocos_against_the_published_vocos(capsys):
    """EnCodec encoding, Vocos-EnCodec decoding: the torch side is the vocos package's decoder on
    transformers EnCodec's latent, the nclm side its conversion; both run and agree on codes."""
    args = _args("--model encodec_24khz_vocos --seconds 0.5 --batch 2 --repeats 1")
    result = bench_codec.run(args)
    assert result["reference"] == "transformers + vocos"
    assert all(r["nclm_xrt"] > 0 and r["torch_xrt"] > 0 for r in result["results"])
    assert all(a == 1.0 for a in result["codes_agree"].values())
    assert (result["config"]["num_codebooks"], result["config"]["kbps"]) == (16, 6.0)


@pytest.mark.parametrize("model", ["encodec_24khz", "encodec_24khz_vocos"])
def test_bench_codec_without_reference(monkeypatch, capsys, model):
    """Missing torch/transformers (or vocos): nclm alone, and one line saying so."""
    monkeypatch.setattr(
        bench_codec,
        "_import_reference",
        lambda family: (None, "reference unavailable (test); timing nclm only."),
    )
    result = bench_codec.run(_args(f"--model {model} --seconds 0.2 --batch 1 --repeats 1"))
    assert [r["torch_xrt"] for r in result["results"]] == [None, None]
    assert all(r["nclm_xrt"] > 0 for r in result["results"])
    assert capsys.readouterr().out.count("reference unavailable") == 1


@pytest.mark.heavy
def test_bench_codec_train_runs_the_configs_step(tmp_path):
    """The sharded tiny DAC step of tests/train (same shapes and mesh), timed through the bench."""
    from nclm.bench import codec_train as bench_train

    parser = argparse.ArgumentParser()
    bench_train.add_arguments(parser)
    out = tmp_path / "train.json"
    args = parser.parse_args(
        ["--config", f"{CONFIGS}/codec/dac_16khz.py:tiny", "--steps", "2", "--json", str(out)]
    )
    overrides = ["--config.mesh.data=4", "--config.mesh.fsdp=2", "--config.data.batch_size=8"]
    result = bench_train.run(args, overrides)
    assert result["batch"] == 8 and result["crop_seconds"] == pytest.approx(0.4)
    assert result["audio_seconds_per_second"] == pytest.approx(
        8 * 0.4 / result["step_seconds_median"]
    )
    assert json.loads(out.read_text())["command"].endswith(" ".join(overrides))


def test_bench_lm_decode_tiny(tmp_path, capsys):
    """Every row runs all --steps (min_new = max_new); a table and one JSON line are printed."""
    from nclm.bench import lm_decode

    parser = argparse.ArgumentParser()
    lm_decode.add_arguments(parser)
    out = tmp_path / "lm.json"
    command_line = "--preset tiny --batch 2 --context 16 --steps 8 --repeats 1".split()
    args = parser.parse_args(command_line + ["--json", str(out)])
    result = lm_decode.run(args)
    assert [r["batch"] for r in result["results"]] == [2]
    for r in result["results"]:
        assert r["text"] + r["prompt"] == 16 and r["ar_compile_s"] > 0
        assert r["ar_steps_per_s"] == pytest.approx(8 / r["ar_call_s"])
        assert r["nar_passes_per_s"] == pytest.approx(3 / r["nar_call_s"])  # tiny: Q = 4
        assert r["attention"] == "auto" and r["ar_temp_mb"] > 0 and r["nar_temp_mb"] > 0
    assert result["peak_rss_mb"] > 0
    json_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(json_line)["command"] == result["command"]
    assert json.loads(out.read_text())["results"] == result["results"]
    # --no-nar: the AR program alone (the long-context runs whose NAR passes take minutes)
    (row,) = lm_decode.run(parser.parse_args([*command_line, "--no-nar"]))["results"]
    assert "ar_call_s" in row and "nar_call_s" not in row and "nar_compile_s" not in row


def test_bench_masked_tiny(capsys):
    """A random tiny LM and codec; 16 + Q - 1 passes (guided); LM and codec times add up."""
    from nclm.bench import masked

    parser = argparse.ArgumentParser()
    masked.add_arguments(parser)
    argv = "--preset tiny --levels 4 --seconds 2 --prompt-seconds 1 --repeats 1"
    result = masked.run(parser.parse_args(argv.split()))
    assert (result["frames"], result["prompt_frames"], result["passes"]) == (100, 50, 16 + 3)
    assert result["lm_compile_s"] > 0 and result["lm_s"] > 0 and result["codec_s"] > 0
    assert result["total_s"] == pytest.approx(result["lm_s"] + result["codec_s"])
    assert result["rtf"] == pytest.approx(result["total_s"] / 2)
    json_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(json_line)["command"] == result["command"]


def test_bench_speechx_decode_part(tmp_path, capsys):
    """Noise suppression of 0.5 s (25 frames) with the SpeechX LM: AR + NAR against masked
    (16 + Q - 1 = 23 passes); bad --parts fail before any model work."""
    from nclm.bench import speechx

    parser = argparse.ArgumentParser()
    speechx.add_arguments(parser)
    for parts, match in (("decode,nope", "--parts"), ("step", "add simulate")):
        with pytest.raises(ValueError, match=match):
            speechx.run(parser.parse_args(["--parts", parts]))
    argv = [
        "--seconds",
        "0.5",
        "--repeats",
        "1",
        "--parts",
        "decode",
        "--json",
        str(tmp_path / "x"),
    ]
    result = speechx.run(parser.parse_args(argv))
    d = result["decode"]
    assert (d["frames"], d["masked_passes"]) == (25, 16 + 8 - 1)
    assert d["ar_nar_s"] > 0 and d["masked_over_ar_nar"] == pytest.approx(
        d["masked_s"] / d["ar_nar_s"]
    )
    assert "simulate" not in result and "step" not in result
    assert "AR + NAR" in capsys.readouterr().out
    assert json.loads((tmp_path / "x").read_text())["decode"] == d


def test_bench_lm_train_counts_model_flops(tmp_path):
    """The LM step is timed on a fixed batch; model FLOPs follow MaxText's count (AR causal + NAR
    bidirectional passes), and MFU uses --peak-tflops."""
    from nclm.bench import lm_train
    from nclm.config import load_config
    from nclm.lm.experiment import lm_config_from

    parser = argparse.ArgumentParser()
    lm_train.add_arguments(parser)
    args = parser.parse_args(
        "--config configs/lm/valle.py:smoke --batch 8 --text 8 --frames 16 --steps 2".split()
        + ["--peak-tflops", "1.0", "--json", str(tmp_path / "t.json")]
    )
    result = lm_train.run(args)  # over the 8 test devices
    lm = lm_config_from(load_config("configs/lm/valle.py:smoke"), 128)
    flops = lm_train.pass_flops(lm, 8, 24, lm.codebook_size + 1, True) + lm_train.pass_flops(
        lm, 8, 24, lm.codebook_size, False
    )
    assert result["tokens_per_second"] == pytest.approx(8 * 24 / result["step_seconds_median"])
    assert result["model_tflops_per_second"] == pytest.approx(
        flops / result["step_seconds_median"] / 1e12
    )
    assert result["mfu"] == pytest.approx(result["model_tflops_per_second"])


def test_pass_flops_hand_count():
    """MaxText's count for a tiny GQA config, written out by hand: D 64, N 4 query heads and K 2
    KV heads of H 16, F 256, 2 layers; batch 2 x 10 positions (20 tokens), 17 outputs.
    Multiply-adds per token per layer:  q 64*4*16 = 4096,  k and v 2 * 64*2*16 = 4096,
    out 4*16*64 = 4096,  FFN 2 * 64*256 = 32768;  in all 45056 -> 2 * 20 * 45056 = 1,802,240.
    Attention QK^T and AV: 2 (rows) * 10*10 * 4*16 * 2 = 25,600 MACs = 51,200 FLOPs, halved when
    causal. Head 2 * 20 * 64 * 17 = 43,520. Training = 3 x forward:
      causal  3 * (2 * (1,802,240 + 25,600) + 43,520) = 11,097,600
      bidir.  3 * (2 * (1,802,240 + 51,200) + 43,520) = 11,251,200"""
    from nclm.bench import lm_train
    from nclm.lm import config as C
    from nclm.lm.model import init_lm

    lm = C.tiny(4, 16, num_kv_heads=2, text_vocab_size=20)
    assert (lm.width, lm.num_heads, lm.ffn, lm.num_layers) == (64, 4, 256, 2)
    assert lm_train.pass_flops(lm, 2, 10, 17, causal=True) == 11_097_600
    assert lm_train.pass_flops(lm, 2, 10, 17, causal=False) == 11_251_200
    # the hand count's 45056 multiply-adds per token are the model's own per-layer kernels
    shapes = jax.eval_shape(lambda: init_lm(lm, jax.random.PRNGKey(0)))["params"]
    kernels = [
        math.prod(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(shapes))
        if path[-1].key == "kernel" and any(getattr(k, "key", None) == "layers" for k in path)
    ]
    assert sum(kernels) == lm.num_layers * 45056, kernels


def test_bench_lm_decode_vs_transformers_tiny(capsys):
    """AR against a matched transformers Llama: both timed, the ratio and the weight-read floor."""
    from nclm.bench import lm_decode
    from nclm.lm import config as C

    parser = argparse.ArgumentParser()
    lm_decode.add_arguments(parser)
    args = parser.parse_args(
        "--preset tiny --batch 1 --context 8 --steps 3 --repeats 1 --vs transformers".split()
    )
    result = lm_decode.run(args)
    (row,) = result["results"]
    assert row["ratio"] == pytest.approx(row["nclm_steps_per_s"] / row["transformers_steps_per_s"])
    assert result["read_bandwidth_gb_s"] > 0 and row["floor_steps_per_s"] > 0
    # each side's call splits into its prefill (timed alone) and steps - 1 cached steps (no
    # bound on the times themselves: at this size they are noise)
    for side in ("nclm", "transformers"):
        call = 3 / row[f"{side}_steps_per_s"]
        assert row[f"{side}_prefill_s"] > 0
        assert row[f"{side}_step_ms"] == pytest.approx(1e3 * (call - row[f"{side}_prefill_s"]) / 2)
    # matched sizes: the Llama's layers hold as many weights as our backbone's matmuls
    cfg = C.tiny()
    d, f = cfg.width, cfg.ffn
    ours = cfg.num_layers * (4 * d * d + 2 * d * f) + d * (cfg.codebook_size + 1)
    assert abs(row["llama_step_params"] - ours) / ours < 0.02
    assert "ratio" in capsys.readouterr().out
