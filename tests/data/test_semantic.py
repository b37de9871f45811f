"""Semantic tokens on a tiny randomly initialised HuBERT/WavLM saved with save_pretrained (no
download): features are the truncated model's layer output at 50 Hz and equal the full model's
hidden states; k-means in JAX recovers separated clusters, chunked as unchunked; frame-rate
resampling; the tokenizer directory round trip; `nclm tokens semantic-fit` end to end; bad inputs
fail with one line."""

import json
import sys

import numpy as np
import pytest
import soundfile as sf

from nclm.cli import main
from nclm.data import semantic
from nclm.data.manifest import write_manifest
from nclm.data.semantic import (
    FeatureExtractor,
    SemanticError,
    SemanticTokenizer,
    assign,
    fit_kmeans,
    read_semantic_meta,
    to_frames,
)
from tests.conftest import optional

# The k-means and frame-rate tests run without torch; the feature extractor's need both.
torch, transformers = optional("torch"), optional("transformers")
needs_reference = pytest.mark.needs("torch", "transformers")

LAYERS, WIDTH = 3, 32


def tiny_model(path, kind: str = "hubert", **overrides):
    """A random 3-layer model with the 320x feature encoder of HuBERT-base (50 Hz at 16 kHz)."""
    config = dict(
        hidden_size=WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 8, 8),
        conv_kernel=(10, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        **overrides,
    )
    classes = {
        "hubert": (transformers.HubertConfig, transformers.HubertModel),
        "wavlm": (transformers.WavLMConfig, transformers.WavLMModel),
    }
    config_cls, model_cls = classes[kind]
    torch.manual_seed(0)
    model_cls(config_cls(**config)).save_pretrained(path)
    return path


def tiny_tokenizer(root, k: int = 8) -> SemanticTokenizer:
    """Centroids taken from the tiny HuBERT's features (no fitting), saved to root/semantic."""
    extractor = FeatureExtractor(tiny_model(root / "hubert"), 2, device="cpu")
    feats = extractor(_clip(0, 16000, 1.0), 16000)
    tokenizer = SemanticTokenizer(extractor, feats[np.linspace(0, len(feats) - 1, k).astype(int)])
    tokenizer.save(root / "semantic")
    return tokenizer


def _clip(i: int, sample_rate: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(i)
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    wav = 0.3 * np.sin(2 * np.pi * 150 * (i + 1) * t) + 0.05 * rng.standard_normal(t.size)
    return wav.astype(np.float32)


@pytest.fixture(scope="module")
def hubert(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("models") / "hubert")


@needs_reference
@pytest.mark.parametrize("kind", ["hubert", "wavlm"])
def test_features_are_the_full_models_hidden_states_at_50_hz(tmp_path, kind):
    stable = {"do_stable_layer_norm": True, "feat_extract_norm": "layer"} if kind == "wavlm" else {}
    path = tiny_model(tmp_path / kind, kind, **stable)
    full = getattr(transformers, f"{'WavLM' if kind == 'wavlm' else 'Hubert'}Model")
    full = full.from_pretrained(path).eval()
    wav = _clip(1, 16000, 1.0)
    with torch.no_grad():
        hidden = full(torch.from_numpy(wav)[None], output_hidden_states=True).hidden_states
    for layer in range(1, LAYERS + 1):
        extractor = FeatureExtractor(path, layer, device="cpu")
        assert len(extractor.model.encoder.layers) == layer  # the layers above are not run
        assert (extractor.frame_rate, extractor.sample_rate) == (50.0, 16000)
        feats = extractor(wav, 16000)
        assert feats.shape == (49, WIDTH) and feats.dtype == np.float32  # 1 s -> 49 full frames
        # stable layer norm: the full model's last entry is layer-normed, layer outputs are not
        if layer < LAYERS or kind == "hubert":
            np.testing.assert_allclose(feats, hidden[layer][0].numpy(), atol=1e-5)


@needs_reference
def test_features_resample_and_pad(hubert):
    import soxr

    extractor = FeatureExtractor(hubert, 2, device="cpu")
    wav = _clip(2, 24000, 2.0)
    feats = extractor(wav, 24000)
    assert feats.shape == (99, WIDTH)  # 2 s at 50 Hz, less the last incomplete frame
    resampled = soxr.resample(wav, 24000, 16000, quality="HQ").astype(np.float32)
    np.testing.assert_allclose(feats, extractor(resampled, 16000), atol=1e-6)
    assert extractor(wav[:50], 24000).shape == (1, WIDTH)  # shorter than one receptive field


def _blobs(num_clusters=6, per=40, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = 20 * rng.standard_normal((num_clusters, dim))
    labels = rng.permutation(np.repeat(np.arange(num_clusters), per))
    return (centers[labels] + 0.3 * rng.standard_normal((len(labels), dim))).astype(np.float32), (
        labels
    )


def test_kmeans_recovers_separated_clusters(monkeypatch):
    x, labels = _blobs()
    centroids = fit_kmeans(x, 6, iters=10, seed=0)
    assert centroids.shape == (6, 8) and centroids.dtype == np.float32
    ids = assign(x, centroids)
    assert ids.dtype == np.int32
    pairs = set(zip(labels.tolist(), ids.tolist()))
    assert len(pairs) == 6 and len({a for _, a in pairs}) == 6  # the same partition
    for true, found in pairs:
        np.testing.assert_allclose(centroids[found], x[labels == true].mean(0), atol=1e-4)
    # in chunks of 64 rows (the last one padded), the same centroids and ids
    monkeypatch.setattr(semantic, "_CHUNK", 64)
    np.testing.assert_allclose(fit_kmeans(x, 6, iters=10, seed=0), centroids, atol=1e-4)
    np.testing.assert_array_equal(assign(x, centroids), ids)


def test_assign_is_the_nearest_centroid(monkeypatch):
    rng = np.random.default_rng(1)
    x, c = rng.standard_normal((300, 16)), rng.standard_normal((10, 16))
    brute = np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(assign(x, c), brute)
    monkeypatch.setattr(semantic, "_CHUNK", 128)  # 128 + 128 + 44 rows
    np.testing.assert_array_equal(assign(x, c), brute)
    with pytest.raises(ValueError, match="k = 400 clusters need at least 400 feature frames"):
        fit_kmeans(x, 400)


def test_to_frames():
    ids = np.array([5, 6, 7])
    np.testing.assert_array_equal(to_frames(ids, 6, 25, 50), [5, 5, 6, 6, 7, 7])  # SoundStorm
    np.testing.assert_array_equal(to_frames(ids, 4, 50, 50), [5, 6, 7, 7])  # the last id again
    np.testing.assert_array_equal(to_frames(np.arange(4), 6, 50, 75), [0, 1, 1, 2, 3, 3])
    np.testing.assert_array_equal(to_frames(np.arange(6), 3, 50, 25), [1, 3, 5])
    assert to_frames(ids, 5, 50, 50).dtype == np.int32


@needs_reference
def test_tokenizer_directory_round_trip(hubert, tmp_path):
    extractor = FeatureExtractor(hubert, 2, device="cpu")
    centroids = extractor(_clip(3, 16000, 1.0), 16000)[::7]  # [7, D]
    tokenizer = SemanticTokenizer(extractor, centroids)
    tokenizer.save(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == [
        "centroids.npy",
        "semantic.json",
    ]
    meta = read_semantic_meta(tmp_path / "tok")
    assert meta["model"] == str(hubert) and meta["tokenizer_id"] == tokenizer.tokenizer_id
    assert (meta["model_type"], meta["layer"], meta["num_clusters"], meta["dim"]) == (
        "hubert", 2, 7, WIDTH
    )  # fmt: skip
    loaded = SemanticTokenizer.load(tmp_path / "tok", device="cpu")
    wav = _clip(4, 22050, 1.3)
    ids = tokenizer.tokens(wav, 22050)
    assert ids.dtype == np.int32 and ids.shape == (64,) and ids.max() < 7
    np.testing.assert_array_equal(loaded.tokens(wav, 22050), ids)
    np.testing.assert_array_equal(
        loaded.frame_tokens(wav, 22050, 98, 75.0), to_frames(ids, 98, 50.0, 75.0)
    )
    np.save(tmp_path / "tok" / "centroids.npy", centroids[:6])
    with pytest.raises(SemanticError, match="differ from the ones this tokenizer was fitted with"):
        SemanticTokenizer.load(tmp_path / "tok", device="cpu")


def _manifest(root, count=4):
    records = []
    for i in range(count):
        sample_rate = 22050 if i == 1 else 16000
        wav = _clip(10 + i, sample_rate, 0.5 + 0.2 * i)
        sf.write(root / f"{i}.wav", wav, sample_rate, subtype="FLOAT")
        duration = len(wav) / sample_rate
        records.append(
            {"utt_id": f"u{i}", "audio": f"{i}.wav", "duration": duration, "speaker": "s"}
        )
    write_manifest(root / "train.jsonl", records)
    return root / "train.jsonl"


@needs_reference
def test_semantic_fit_cli(hubert, tmp_path, capsys):
    manifest = _manifest(tmp_path)
    out = tmp_path / "semantic"
    main(["tokens", "semantic-fit", "--model", str(hubert), "--layer", "2", "--manifest",
          str(manifest), "--out", str(out), "--k", "5", "--max-frames", "100", "--iters", "5",
          "--device", "cpu", "--no-progress"])  # fmt: skip
    assert "k=5 centroids of layer 2 (hubert, 50 Hz) from 100 frames" in capsys.readouterr().out
    meta = json.loads((out / "semantic.json").read_text())
    assert (meta["format"], meta["num_clusters"], meta["frame_rate"]) == ("nclm-semantic", 5, 50)
    assert np.load(out / "centroids.npy").shape == (5, WIDTH)
    tokenizer = SemanticTokenizer.load(out, device="cpu")
    ids = tokenizer.tokens(_clip(11, 16000, 1.0), 16000)
    assert ids.shape == (49,) and 0 <= ids.min() and ids.max() < 5
    # the same seed, the same tokenizer
    main(["tokens", "semantic-fit", "--model", str(hubert), "--layer", "2", "--manifest",
          str(manifest), "--out", str(tmp_path / "again"), "--k", "5", "--max-frames", "100",
          "--iters", "5", "--device", "cpu", "--no-progress"])  # fmt: skip
    assert (tmp_path / "again" / "centroids.npy").read_bytes() == (
        out / "centroids.npy"
    ).read_bytes()


def _cli_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(["tokens", "semantic-fit", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


@needs_reference
def test_errors_are_one_line(hubert, tmp_path, capsys, monkeypatch):
    manifest = _manifest(tmp_path, 1)
    args = ["--manifest", str(manifest), "--out", str(tmp_path / "out"), "--device", "cpu"]
    err = _cli_error(capsys, "--model", str(tmp_path / "nope"), "--layer", "2", *args)
    assert "--model" in err and "nope: no such model directory" in err
    err = _cli_error(capsys, "--model", str(tmp_path), "--layer", "2", *args)
    assert "no config.json" in err
    err = _cli_error(capsys, "--model", str(hubert), "--layer", "4", *args)
    assert "--layer 4: expected 1..3" in err
    err = _cli_error(capsys, "--model", str(hubert), "--layer", "2", "--k", "400",
                     "--max-frames", "100", *args)  # fmt: skip
    assert "--max-frames: expected an integer >= 400 (--k), got 100" in err
    err = _cli_error(capsys, "--model", str(hubert), "--layer", "2", "--k", "40", "--no-progress",
                     *args)  # fmt: skip
    assert "train.jsonl: 24 feature frames in all, fewer than --k 40" in err
    assert not (tmp_path / "out").exists()

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(SemanticError, match="model_type 'bert', expected one of hubert, wavlm"):
        FeatureExtractor(tmp_path / "bert", 1)
    with pytest.raises(SemanticError, match="not a semantic tokenizer"):
        read_semantic_meta(tmp_path)
    monkeypatch.setitem(sys.modules, "transformers", None)
    err = _cli_error(capsys, "--model", str(hubert), "--layer", "2", *args)
    assert err.endswith("pip install nclm[semantic]") and "transformers is missing" in err
