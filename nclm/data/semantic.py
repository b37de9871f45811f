"""Semantic tokens: k-means ids of a self-supervised speech model's hidden states (HuBERT or WavLM
from a local `transformers` checkpoint), SoundStorm's conditioning and the seed paper's (HuBERT-base
features, 50 Hz).

    nclm tokens semantic-fit --model hubert-base --layer 6 --manifest train.jsonl --out semantic
    nclm tokens extract --codec runs/codec --manifest train.jsonl --out tokens --semantic semantic

    tok = SemanticTokenizer.load("semantic")
    ids = tok.tokens(wav, 24000)                             # int32[T_sem] at tok.frame_rate
    ids = to_frames(ids, num_frames, tok.frame_rate, 75.0)   # int32[T] on the codec's frames

A tokenizer directory holds `semantic.json` ({"format": "nclm-semantic", "version": 1, "model":
model dir, "model_type": "hubert"|"wavlm", "layer", "num_clusters" K, "dim" D, "sample_rate",
"frame_rate", "normalize", "tokenizer_id"}) and `centroids.npy` (float32[K, D]). The model itself
stays where it is; `tokenizer_id` hashes everything but its path.

Features are the output of transformer layer `layer` (1-based, as fairseq's `output_layer` and
`hidden_states[layer]` of transformers; the layers above it are not run), one utterance at a time
(no padding: the group-norm feature encoder of base models would see it).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nclm.atomic import write_dir_atomic
from nclm.codec.quantize import HIGHEST, nearest_euclidean

FORMAT, VERSION = "nclm-semantic", 1
META, CENTROIDS = "semantic.json", "centroids.npy"
MODEL_TYPES = ("hubert", "wavlm")
_KEYS = ("model", "model_type", "layer", "dim", "sample_rate", "frame_rate", "normalize")
_CHUNK = 4096  # rows per distance matrix [rows, K]: bounded memory for any number of frames


class SemanticError(ValueError):
    """An unusable model, tokenizer directory or option; one line naming it."""


# -- features ---------------------------------------------------------------------------------


class FeatureExtractor:
    """`extractor(wav, sample_rate)` -> float32[T_feat, D], the hidden states of `layer`."""

    def __init__(self, model_dir: str | os.PathLike, layer: int, device: str | None = None):
        torch, transformers = _backend()
        self.model_dir = Path(model_dir).absolute()
        config = _model_config(self.model_dir)
        self.model_type = config["model_type"]
        num_layers = int(config["num_hidden_layers"])
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= num_layers:
            raise SemanticError(
                f"--layer {layer}: expected 1..{num_layers} ({self.model_dir} has {num_layers})"
            )
        self.layer, self.dim = layer, int(config["hidden_size"])
        pre = self.model_dir / "preprocessor_config.json"
        pre = json.loads(pre.read_text()) if pre.is_file() else {}
        self.sample_rate = int(pre.get("sampling_rate", 16000))
        self.normalize = bool(pre.get("do_normalize", False))  # zero mean, unit variance
        strides, kernels = config["conv_stride"], config["conv_kernel"]
        self.frame_rate = self.sample_rate / math.prod(strides)
        # samples one output frame sees: shorter input is zero-padded to give one frame
        self.receptive_field = 1 + sum(
            (k - 1) * math.prod(strides[:i]) for i, k in enumerate(kernels)
        )

        cls = {"hubert": transformers.HubertModel, "wavlm": transformers.WavLMModel}
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()  # a bar per load; ours say enough
        try:
            model = cls[self.model_type].from_pretrained(self.model_dir, local_files_only=True)
        except (OSError, ValueError) as e:
            raise SemanticError(
                f"{self.model_dir}: cannot load the model ({_one_line(e)})"
            ) from None
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
        model.encoder.layers = torch.nn.ModuleList(model.encoder.layers[:layer])
        self._out: list = []
        model.encoder.layers[-1].register_forward_hook(lambda m, i, out: self._out.append(out))
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self._torch = torch

    def __call__(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        wav = np.asarray(wav, np.float32)
        if wav.ndim != 1 or not wav.size:
            raise ValueError(f"expected mono audio float[S] with S > 0, got shape {wav.shape}")
        if sample_rate != self.sample_rate:
            import soxr  # as nclm.audio.io.load_audio resamples

            wav = soxr.resample(wav, sample_rate, self.sample_rate, quality="HQ")
            wav = wav.astype(np.float32, copy=False)
        if self.normalize:
            wav = (wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)
        wav = np.pad(wav, (0, max(0, self.receptive_field - wav.size)))
        torch = self._torch
        self._out.clear()
        with torch.inference_mode():
            self.model(torch.from_numpy(wav)[None].to(self.device))
        out = self._out.pop()
        out = out[0] if isinstance(out, tuple) else out  # [1, T, D]
        return out[0].float().cpu().numpy()

    def describe(self) -> dict:
        return {k: str(self.model_dir) if k == "model" else getattr(self, k) for k in _KEYS}


def _backend():
    try:
        import torch
        import transformers
    except ImportError as e:
        raise SemanticError(
            f"semantic tokens need torch and transformers ({e.name} is missing): "
            "pip install nclm[semantic]"
        ) from None
    return torch, transformers


def _model_config(model_dir: Path, what: str = "--model") -> dict:
    if not model_dir.is_dir():
        raise SemanticError(f"{what} {model_dir}: no such model directory")
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except FileNotFoundError:
        raise SemanticError(
            f"{what} {model_dir}: no config.json (expected a transformers HuBERT/WavLM "
            "directory, as written by save_pretrained)"
        ) from None
    except (OSError, json.JSONDecodeError) as e:
        raise SemanticError(f"{model_dir / 'config.json'}: unreadable ({e})") from None
    if config.get("model_type") not in MODEL_TYPES:
        raise SemanticError(
            f"{model_dir / 'config.json'}: model_type {config.get('model_type')!r}, expected "
            f"one of {', '.join(MODEL_TYPES)}"
        )
    return config


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


# -- k-means ----------------------------------------------------------------------------------


def fit_kmeans(features: np.ndarray, k: int, iters: int = 100, seed: int = 0) -> np.ndarray:
    """Centroids float32[K, D] of features[N, D]: k-means++ seeding (each next centroid a row
    drawn with probability proportional to its squared distance to the nearest centroid so far),
    then `iters` Lloyd iterations (assign every row to its nearest centroid, move each centroid
    to the mean of its rows; one that gets no row stays). Rows are processed in chunks of 4096,
    so memory stays O(N D + 4096 K)."""
    x = np.asarray(features, np.float32)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(f"features: expected finite float[N, D], got shape {x.shape}")
    for name, value, low in (("k", k, 1), ("iters", iters, 0), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    if k > len(x):
        raise ValueError(f"k = {k} clusters need at least {k} feature frames, got {len(x)}")
    rows = min(_CHUNK, len(x))
    pad = -len(x) % rows
    valid = np.arange(len(x) + pad) < len(x)
    x = np.pad(x, ((0, pad), (0, 0)))
    centroids = _kmeans_pp(jnp.asarray(x), jnp.asarray(valid), int(k), jax.random.PRNGKey(seed))
    xs, vs = x.reshape(-1, rows, x.shape[1]), valid.reshape(-1, rows)  # [C, M, D], [C, M]
    return np.asarray(_lloyd(jnp.asarray(xs), jnp.asarray(vs), centroids, int(iters)))


@partial(jax.jit, static_argnums=2)
def _kmeans_pp(x: jax.Array, valid: jax.Array, k: int, key: jax.Array) -> jax.Array:
    xx = jnp.sum(jnp.square(x), axis=-1)  # [N]

    def dist2(c):  # squared distance of every row to c[D], without an [N, D] temporary
        d = xx - 2 * jnp.einsum("nd,d->n", x, c, precision=HIGHEST) + jnp.sum(jnp.square(c))
        return jnp.where(valid, jnp.maximum(d, 0.0), 0.0)

    def pick(key, d2):  # D^2 sampling; uniform over valid rows once every row is a centroid
        uniform = jnp.where(valid, 0.0, -jnp.inf)
        return jax.random.categorical(key, jnp.where(d2.sum() > 0, jnp.log(d2), uniform))

    keys = jax.random.split(key, k)
    first = x[jax.random.categorical(keys[0], jnp.where(valid, 0.0, -jnp.inf))]
    centroids = jnp.zeros((k, x.shape[1]), jnp.float32).at[0].set(first)

    def body(i, carry):
        centroids, d2 = carry
        c = x[pick(keys[i], d2)]
        return centroids.at[i].set(c), jnp.minimum(d2, dist2(c))

    centroids, _ = jax.lax.fori_loop(1, k, body, (centroids, dist2(first)))
    return centroids


@jax.jit
def _lloyd(xs: jax.Array, valid: jax.Array, centroids: jax.Array, iters: jax.Array) -> jax.Array:
    k = centroids.shape[0]

    def step(_, centroids):
        def chunk(carry, inputs):
            sums, counts = carry
            x, v = inputs
            onehot = jax.nn.one_hot(nearest_euclidean(x, centroids), k) * v[:, None]  # [M, K]
            sums = sums + jnp.einsum("mk,md->kd", onehot, x, precision=HIGHEST)
            return (sums, counts + onehot.sum(axis=0)), None

        zeros = (jnp.zeros_like(centroids), jnp.zeros(k, jnp.float32))
        (sums, counts), _ = jax.lax.scan(chunk, zeros, (xs, valid))
        mean = sums / jnp.maximum(counts, 1.0)[:, None]
        return jnp.where(counts[:, None] > 0, mean, centroids)

    return jax.lax.fori_loop(0, iters, step, centroids)


_nearest = jax.jit(nearest_euclidean)


def assign(features: np.ndarray, centroids: np.ndarray | jax.Array) -> np.ndarray:
    """features[N, D] -> int32[N], the nearest centroid of each row. Rows go in chunks of 4096,
    the last one padded to a power of two: a handful of compiled shapes serve every length."""
    x = np.asarray(features, np.float32)
    out = np.zeros(len(x), np.int32)
    for start in range(0, len(x), _CHUNK):
        part = x[start : start + _CHUNK]
        size = max(64, 1 << (len(part) - 1).bit_length())
        padded = np.pad(part, ((0, size - len(part)), (0, 0)))
        out[start : start + len(part)] = np.asarray(_nearest(padded, centroids))[: len(part)]
    return out


# -- frame rates ------------------------------------------------------------------------------


def to_frames(ids: np.ndarray, num_frames: int, source_rate: float, target_rate: float):
    """ids[T_sem] at `source_rate` Hz -> int32[num_frames] at `target_rate` Hz, nearest
    neighbour in time: frame j (centred at (j + 1/2) / target_rate s) takes id
    i = floor((j + 1/2) * source_rate / target_rate), clipped to the last id. Equal rates keep
    the ids; 25 -> 50 Hz repeats each id twice (SoundStorm); 50 -> 75 Hz gives 0 1 1 2 3 3 ...
    (the seed paper's HuBERT ids on EnCodec's 24 kHz frames). The SSL model's last frame may be
    missing (it needs a full receptive field); the clip repeats the last id there."""
    ids = np.asarray(ids, np.int32)
    if not ids.size:
        raise ValueError("to_frames: no semantic ids to resample")
    j = np.arange(num_frames, dtype=np.float64)
    i = np.floor((j + 0.5) * (source_rate / target_rate)).astype(np.int64)
    return ids[np.minimum(i, ids.size - 1)]


# -- the tokenizer ----------------------------------------------------------------------------


def read_semantic_meta(path: str | os.PathLike) -> dict:
    """semantic.json of a tokenizer directory, checked; no model or torch needed."""
    path = Path(path)
    if not (path / META).is_file() or not (path / CENTROIDS).is_file():
        raise SemanticError(
            f"--semantic {path}: not a semantic tokenizer (expected {META} and {CENTROIDS}, "
            "as written by `nclm tokens semantic-fit`)"
        )
    try:
        meta = json.loads((path / META).read_text())
    except json.JSONDecodeError as e:
        raise SemanticError(f"{path / META}: invalid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SemanticError(f"{path / META}: format is not {FORMAT!r}")
    missing = [k for k in (*_KEYS, "num_clusters", "tokenizer_id") if k not in meta]
    if missing:
        raise SemanticError(f"{path / META}: lacks {', '.join(missing)}")
    return meta


def check_tokenizer(path: str | os.PathLike) -> dict:
    """read_semantic_meta, plus torch/transformers importable and the model directory usable:
    what a command checks before any work that needs the tokenizer later."""
    meta = read_semantic_meta(path)
    _backend()
    _model_config(Path(meta["model"]), f"{Path(path) / META}: model")
    return meta


class SemanticTokenizer:
    """A FeatureExtractor and k-means centroids float32[K, D]."""

    def __init__(self, extractor: FeatureExtractor, centroids: np.ndarray):
        centroids = np.asarray(centroids, np.float32)
        if centroids.ndim != 2 or centroids.shape[1] != extractor.dim:
            raise SemanticError(
                f"centroids of shape {centroids.shape} do not fit {extractor.model_dir} "
                f"(width {extractor.dim})"
            )
        self.extractor, self.centroids = extractor, centroids
        self._centroids = jnp.asarray(centroids)
        meta = {**extractor.describe(), "num_clusters": len(centroids)}
        digest = hashlib.sha1(json.dumps({**meta, "model": None}, sort_keys=True).encode())
        digest.update(centroids.tobytes())
        self.meta = {"format": FORMAT, "version": VERSION, **meta, "tokenizer_id": ""}
        self.meta["tokenizer_id"] = digest.hexdigest()[:16]

    @classmethod
    def load(
        cls, path: str | os.PathLike, model_dir: str | None = None, device: str | None = None
    ) -> SemanticTokenizer:
        """`model_dir` overrides the model path recorded in semantic.json (a moved model)."""
        meta = read_semantic_meta(path)
        extractor = FeatureExtractor(model_dir or meta["model"], int(meta["layer"]), device)
        tok = cls(extractor, np.load(Path(path) / CENTROIDS))
        if tok.tokenizer_id != meta.get("tokenizer_id"):
            raise SemanticError(
                f"{Path(path) / META}: the model config at {extractor.model_dir} or "
                f"{CENTROIDS} differ from the ones this tokenizer was fitted with"
            )
        return tok

    def save(self, path: str | os.PathLike) -> None:
        def fill(tmp: Path) -> None:
            np.save(tmp / CENTROIDS, self.centroids)
            (tmp / META).write_text(json.dumps(self.meta, indent=1) + "\n")

        write_dir_atomic(path, fill)

    @property
    def tokenizer_id(self) -> str:
        return self.meta["tokenizer_id"]

    @property
    def num_clusters(self) -> int:
        return len(self.centroids)

    @property
    def sample_rate(self) -> int:
        return self.extractor.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.extractor.frame_rate

    def tokens(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono float[S] at `sample_rate` -> int32[T_sem] at `frame_rate`."""
        return assign(self.extractor(wav, sample_rate), self._centroids)

    def frame_tokens(
        self, wav: np.ndarray, sample_rate: int, num_frames: int, frame_rate: float
    ) -> np.ndarray:
        """The ids on another frame grid (a codec's): int32[num_frames], see `to_frames`."""
        return to_frames(self.tokens(wav, sample_rate), num_frames, self.frame_rate, frame_rate)


# -- fitting ----------------------------------------------------------------------------------


def fit_semantic(
    model_dir: str | os.PathLike,
    layer: int,
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    k: int = 500,
    max_frames: int = 250_000,
    iters: int = 100,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Features of the manifest's utterances in a random order (by `seed`) until `max_frames`
    frames, k-means on them, the tokenizer saved to `out`. Returns a summary dict."""
    from tqdm import tqdm

    from nclm.audio.io import AudioError, load_audio
    from nclm.data.manifest import ManifestError, read_manifest_lines, resolve_audio

    checks = (
        ("--k", k, 1, ""),
        ("--max-frames", max_frames, k, " (--k)"),
        ("--iters", iters, 0, ""),
    )
    for name, value, low, why in (*checks, ("--seed", seed, 0, "")):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SemanticError(f"{name}: expected an integer >= {low}{why}, got {value!r}")
    if Path(out).exists() and not Path(out).is_dir():
        raise SemanticError(f"--out {out}: exists and is not a directory")
    lines = read_manifest_lines(manifest)
    if not lines:
        raise ManifestError(f"{manifest}: no records")
    extractor = FeatureExtractor(model_dir, layer, device)
    feats, total, used = [], 0, 0
    order = np.random.default_rng(seed).permutation(len(lines))
    with tqdm(total=max_frames, unit="frame", desc="features", disable=not progress) as bar:
        for i in order.tolist():
            n, record = lines[i]
            try:
                wav = load_audio(resolve_audio(manifest, record), extractor.sample_rate)
            except AudioError as e:
                raise AudioError(f"{manifest}:{n}: {e}") from None
            feats.append(extractor(wav, extractor.sample_rate)[: max_frames - total])
            total, used = total + len(feats[-1]), used + 1
            bar.update(len(feats[-1]))
            if total >= max_frames:
                break
    if total < k:
        raise SemanticError(
            f"--manifest {manifest}: {total} feature frames in all, fewer than --k {k}"
        )
    centroids = fit_kmeans(np.concatenate(feats), k, iters, seed)
    tokenizer = SemanticTokenizer(extractor, centroids)
    tokenizer.save(out)
    return {"out": str(out), "utterances": used, "frames": total, **tokenizer.meta}
