"""`evaluate_codec` and `nclm codec eval` on a tiny random codec and three generated clips: the
report has every key with finite numbers (or null with a reason), PESQ/STOI equal to pesq's and
pystoi's on the same signals, SI-SDR and codebook usage equal to their closed forms, the files are
written, and bad inputs fail with one line naming the path."""

import argparse
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from flax import linen as nn

from nclm.codec import config as C
from nclm.codec.checkpoint import CheckpointError
from nclm.codec.interface import NeuralCodec
from nclm.codec.model import Codec
from nclm.data.manifest import ManifestError
from nclm.eval.codec_eval import METRICS, EvalError, add_arguments, evaluate_codec, run

SR = 16000
REPORT_KEYS = {
    "codec_id",
    "sample_rate",
    "num_levels",
    "codebook_size",
    "bitrate_kbps",
    "manifest",
    "num_items",
    "total_seconds",
    "metrics",
    "codebook_usage",
    "items",
    "notes",
}


def _random_codec() -> NeuralCodec:
    """tiny("seanet") with every variable drawn from N(0, 0.5²). Shapes come from eval_shape:
    compiling the real `init_codec` takes ~25 s on a 2-core CPU, and the evaluation does not care
    how the weights were initialised."""
    cfg = C.tiny("seanet")
    keys = {"params": jax.random.PRNGKey(0), "codebooks": jax.random.PRNGKey(1)}
    shapes = jax.eval_shape(lambda: Codec(cfg).init(keys, jnp.zeros((1, 4 * cfg.hop_length))))
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map(
        lambda s: rng.normal(0.0, 0.5, s.shape).astype(s.dtype), nn.meta.unbox(shapes)
    )
    return NeuralCodec(cfg, variables)


def _clip(seconds: float, seed: int) -> np.ndarray:
    """Harmonic 'voiced' sound gated into syllables, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 0.8 * t)) / SR
    x = sum(np.sin(h * phase) / h for h in range(1, 25))
    x = x * np.clip(np.sin(2 * np.pi * 3 * t), 0, None) + 0.01 * rng.standard_normal(len(t))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def codec(tmp_path_factory):
    codec = _random_codec()
    codec.save(tmp_path_factory.mktemp("codec") / "tiny")
    return codec


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    lines = []
    for i, seconds in enumerate([1.0, 0.8, 0.6]):  # all in one 50-frame bucket
        sf.write(root / f"utt{i}.wav", _clip(seconds, i), SR)
        record = {"utt_id": f"utt{i}", "audio": f"utt{i}.wav", "duration": seconds, "speaker": "a"}
        lines.append(json.dumps(record) + "\n")
    (root / "test.jsonl").write_text("".join(lines))
    return root / "test.jsonl"


def _check_report(report: dict, num_items: int, num_levels: int) -> None:
    assert set(report) == REPORT_KEYS
    assert report["num_items"] == len(report["items"]) == num_items
    assert report["num_levels"] == num_levels
    assert report["bitrate_kbps"] == pytest.approx(50 * num_levels * 8 / 1000)
    for name in METRICS:
        stats = report["metrics"][name]
        assert set(stats) == {"mean", "std", "count"}
        assert stats["count"] == sum(item[name] is not None for item in report["items"])
        if stats["count"]:
            assert math.isfinite(stats["mean"]) and math.isfinite(stats["std"])
    for item in report["items"]:
        for name in METRICS:
            # null only where the metric is undefined, with the reason kept beside it
            assert item[name] is None and item["warnings"] or math.isfinite(item[name])
    usage = report["codebook_usage"]
    assert len(usage["used"]) == len(usage["perplexity"]) == num_levels
    assert 0 <= usage["efficiency"] <= 1
    assert usage["num_frames"] == sum(math.ceil(item["seconds"] * 50) for item in report["items"])


def _reconstruct_one(codec: NeuralCodec, wav: np.ndarray):
    """One clip through the codec's public encode/decode, as row 0 of a 2-row batch beside an
    empty row: the evaluation's batch shape and zero padding to the 50-frame bucket."""
    padded = np.zeros((2, SR), np.float32)  # 1 s = 50 frames of 320 samples
    padded[0, : len(wav)] = wav
    codes, frames = codec.encode(padded, np.array([len(wav), 0]))
    decoded, samples = codec.decode(codes, frames)
    n = min(len(wav), int(samples[0]))
    return (
        wav[:n].astype(np.float64),
        np.asarray(decoded[0, :n], np.float64),
        codes[0, :, : frames[0]],
    )


def _si_sdr(ref: np.ndarray, est: np.ndarray) -> float:
    """Le Roux et al. 2019, written out: zero-mean signals, the target is ref scaled by
    a = <est, ref> / <ref, ref>, SI-SDR = 10 log10(|a ref|^2 / |est - a ref|^2)."""
    ref, est = ref - ref.mean(), est - est.mean()
    target = (est @ ref) / (ref @ ref) * ref
    return 10 * np.log10((target @ target) / ((est - target) @ (est - target)))


def _check_values(report: dict, codec: NeuralCodec, manifest) -> None:
    """Each item's PESQ-WB and STOI equal the reference libraries' (pesq, pystoi) on the same
    signals, SI-SDR the closed form, and the codebook usage the codes' own histogram."""
    import pesq
    import pystoi

    counts = np.zeros((4, codec.codebook_size))
    for item in report["items"]:
        wav, _ = sf.read(manifest.parent / item["audio"], dtype="float32")
        ref, est, codes = _reconstruct_one(codec, wav)
        assert item["pesq_wb"] == pytest.approx(pesq.pesq(SR, ref, est, "wb"), abs=1e-4)
        if item["stoi"] is not None:
            assert item["stoi"] == pytest.approx(pystoi.stoi(ref, est, SR), abs=1e-5)
        assert item["si_sdr"] == pytest.approx(_si_sdr(ref, est), abs=1e-3)
        for q in range(4):
            counts[q] += np.bincount(codes[q], minlength=codec.codebook_size)
    p = counts / counts.sum(1, keepdims=True)
    entropy = -np.sum(p * np.log2(np.where(p > 0, p, 1)), axis=1)
    usage = report["codebook_usage"]
    np.testing.assert_allclose(usage["used"], (counts > 0).mean(1))
    np.testing.assert_allclose(usage["perplexity"], 2**entropy, rtol=1e-9)
    assert usage["efficiency"] == pytest.approx(entropy.sum() / (4 * np.log2(codec.codebook_size)))
    pesq_values = [item["pesq_wb"] for item in report["items"]]
    assert report["metrics"]["pesq_wb"]["mean"] == pytest.approx(np.mean(pesq_values))


def test_evaluate_codec_writes_metrics_and_plot(codec, manifest, tmp_path):
    out = tmp_path / "eval"
    with pytest.warns(RuntimeWarning, match="1 of 3 utterance"):
        report = evaluate_codec(codec, manifest, out_dir=out, batch_size=2, progress=False)
    _check_report(report, num_items=3, num_levels=4)
    _check_values(report, codec, manifest)
    # 0.6 s gated at 3 Hz holds under 384 ms of speech: STOI is undefined there, and says why
    short = report["items"][2]
    assert short["stoi"] is None and any("STOI undefined" in w for w in short["warnings"])
    assert report["metrics"]["stoi"]["count"] == 2
    assert [item["utt_id"] for item in report["items"]] == ["utt0", "utt1", "utt2"]  # file order
    assert report["total_seconds"] == pytest.approx(2.4)
    assert json.loads((out / "metrics.json").read_text()) == report
    png = (out / "codebook_usage.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert sorted(p.name for p in out.iterdir()) == ["codebook_usage.png", "metrics.json"]


def test_run_from_the_command_line_arguments(codec, manifest, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ckpt = next(p for p in manifest.parents[1].glob("codec*/tiny"))
    argv = ["--codec", str(ckpt), "--manifest", str(manifest), "--out", str(tmp_path / "e")]
    report = run(parser.parse_args([*argv, "--max-items", "2", "--levels", "2"]))
    _check_report(report, num_items=2, num_levels=2)
    assert report["codec_id"] == codec.codec_id
    printed = capsys.readouterr().out
    assert "PESQ-WB" in printed and "MCD (dB)" in printed and "efficiency" in printed
    assert f"metrics -> {tmp_path / 'e' / 'metrics.json'}" in printed
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["num_levels"] == 2


def test_missing_inputs_fail_with_one_line_naming_the_path(codec, manifest, tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ManifestError, match=f"^{missing}: no such manifest file$"):
        evaluate_codec(codec, missing, progress=False)
    with pytest.raises(CheckpointError, match=f"^{tmp_path / 'nocodec'}: no such codec"):
        evaluate_codec(tmp_path / "nocodec", manifest, progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"utt_id": "x", "audio": "gone.wav", "duration": 1.0, "speaker": "a"}\n')
    with pytest.raises(ValueError, match=f"^{bad}:1: {tmp_path / 'gone.wav'}: no such audio file"):
        evaluate_codec(codec, bad, progress=False)
    with pytest.raises(EvalError, match="num_levels: expected 1..4, got 5"):
        evaluate_codec(codec, manifest, num_levels=5, progress=False)
    with pytest.raises(EvalError, match="batch_size: expected a positive integer, got 0"):
        evaluate_codec(codec, manifest, batch_size=0, progress=False)
