"""Codec training: sharded == single device, resumed == uninterrupted, it learns, and a crash in
the middle of a checkpoint write leaves the previous checkpoint usable."""

import dataclasses
import json
import re
import subprocess
import sys
import textwrap
from functools import partial

import jax
import numpy as np
import optax
import pytest
import soundfile as sf

from nclm.codec import config as C
from nclm.codec.experiment import codec_experiment
from nclm.codec.interface import NeuralCodec
from nclm.codec.model import init_codec
from nclm.config import ConfigError
from nclm.sharding import make_mesh
from nclm.train.checkpoint import RunCheckpointer
from nclm.train.codec_train import build_codec_trainer, init_from, train_codec
from nclm.train.metrics import read_metrics

SR = 16000


def _voice(seconds: float, f0: float, seed: int) -> np.ndarray:
    """A voiced, speech-like clip: harmonics with vibrato and a syllable-rate envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.06 * np.sin(2 * np.pi * 5 * t))) / SR
    x = sum(np.sin(k * phase + rng.uniform(0, 6)) / k for k in range(1, 9))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 3.5 * t + rng.uniform(0, 6))
    return (0.15 * x * envelope + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def _corpus(root, clips: int, seconds: float = 1.2) -> str:
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(clips):
        path = root / f"clip{i}.wav"
        sf.write(path, _voice(seconds, 110 + 23 * i, i), SR)
        lines.append(
            json.dumps(
                {"audio": path.name, "duration": seconds, "speaker": f"s{i % 3}", "utt_id": f"u{i}"}
            )
        )
    manifest = root / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return str(manifest)


def _tiny_cfg(kind: str, manifest: str, **train):
    cfg = codec_experiment(C.tiny(kind), tiny=True)
    cfg.data.train = manifest
    cfg.data.valid = manifest
    cfg.data.eval_items = 2
    for k, v in train.items():
        cfg.train[k] = v
    return cfg


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("corpus"), 6)


def _adam_first_step(params0, opt_state, lr: float, b1: float, b2: float, eps: float = 1e-8):
    """Adam's first update written out (Kingma & Ba, t = 1, no weight decay): the moments hold
    m = (1 - b1) g and v = (1 - b2) g^2, so p1 = p0 - lr * (m / (1 - b1)) / (sqrt(v / (1 - b2))
    + eps), about p0 - lr * sign(g). A wrong sign or learning rate is off by lr or more."""
    is_adam = lambda s: isinstance(s, optax.ScaleByAdamState)
    (adam,) = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=is_adam) if is_adam(s)]
    step = lambda p, m, v: p - lr * (m / (1 - b1)) / (np.sqrt(v / (1 - b2)) + eps)
    return jax.tree_util.tree_map(step, params0, adam.mu, adam.nu)


def _schedule_counts(opt_state) -> list[int]:
    is_schedule = lambda s: isinstance(s, optax.ScaleByScheduleState)
    leaves = jax.tree_util.tree_leaves(opt_state, is_leaf=is_schedule)
    return [int(s.count) for s in leaves if is_schedule(s)]


@pytest.mark.parametrize(
    "kind",
    [
        # the DAC step's one-device program is the bf16 test's float32 one (same worker)
        pytest.param("dac", marks=pytest.mark.heavy),
        pytest.param("seanet", marks=pytest.mark.heavy),
    ],
)
def test_sharded_step_equals_single_device(manifest, kind):
    """One full GAN step (generator, discriminator, EMA codebooks) on a 4 x 2 data x fsdp mesh
    equals the step on one device, and each is Adam's first step written out by hand; a second
    step on a NaN batch changes no weight and advances both schedules with the step counter."""
    cfg = _tiny_cfg(kind, manifest)
    segment = 320 * 20
    wav = np.stack([_voice(segment / SR, 100 + 17 * i, i) for i in range(8)])
    batch = {"wav": wav, "mask": np.ones_like(wav)}
    results = []
    for mesh in (make_mesh({"data": 1}, jax.devices()[:1]), make_mesh({"data": 4, "fsdp": 2})):
        trainer = build_codec_trainer(cfg, mesh, segment, 8)
        state0 = trainer.init(jax.random.PRNGKey(0))
        init = jax.device_get((state0.params, state0.disc_params))  # the step donates its state
        state, metrics = trainer.step(state0, batch, jax.random.PRNGKey(1))
        results.append((jax.device_get(state), jax.device_get(metrics), init))
    # on the mesh, the conv stacks' activations are constrained to the batch split (8 ways),
    # block by block: without it fsdp's channel split of the weights leaks into them
    # (BENCHMARKS.md, "The codec's GAN step on an 8-device host")
    lowered = trainer.step.lower(trainer.abstract_state, batch, jax.random.PRNGKey(1)).as_text()
    batch_split = ('[{"data", "fsdp"}, {}, {}]', "{devices=[8,1,1]")  # Shardy, GSPMD
    constrained = [
        line for line in lowered.splitlines()
        if re.search(r"sharding_constraint|@Sharding", line) and any(s in line for s in batch_split)
    ]  # fmt: skip
    assert len(constrained) >= 10, len(constrained)
    (state1, m1, init), (state8, m8, _) = results
    assert m1["nonfinite"] == 0
    for k in m1:
        np.testing.assert_allclose(m8[k], m1[k], rtol=2e-4, atol=1e-5, err_msg=k)

    def same_direction(a, b):  # relative to the leaf's norm: reduction order moves tiny entries
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.linalg.norm(a - b) <= 1e-3 * np.linalg.norm(b) + 1e-7, a.shape

    # The gradients' Adam moments and the EMA statistics: equal up to float32 reduction order.
    for part in ("codebooks", "opt_state", "disc_opt_state"):
        jax.tree_util.tree_map(same_direction, getattr(state8, part), getattr(state1, part))
    # Each run's weights are Adam's first step from its own moments, to float32 rounding (a
    # gradient within float noise of zero may take either sign, so the runs differ by up to 2 lr
    # there; the moments above agree).
    o = cfg.optim
    for s in (state1, state8):
        for got, p0, part, lr in (
            (s.params, init[0], "opt_state", o.lr),
            (s.disc_params, init[1], "disc_opt_state", o.disc_lr),
        ):
            want = _adam_first_step(p0, getattr(s, part), lr, o.b1, o.b2)
            close = partial(np.testing.assert_allclose, rtol=1e-6, atol=0.01 * lr)
            jax.tree_util.tree_map(close, got, want)

    # A non-finite step (a NaN batch) changes no weight; both schedules follow state.step.
    state, metrics = trainer.step(state, {**batch, "wav": wav * np.nan}, jax.random.PRNGKey(2))
    state = jax.device_get(state)
    assert metrics["nonfinite"] == 1 and int(state.step) == 2
    jax.tree_util.tree_map(np.testing.assert_array_equal, state.params, state8.params)
    assert _schedule_counts(state.opt_state) == _schedule_counts(state.disc_opt_state) == [2]


@pytest.mark.heavy
def test_bfloat16_step_is_close_to_float32(manifest):
    """--config.train.compute_dtype=bfloat16: one GAN step (the same batch and state as the sharded
    test, so the float32 program is cached) is finite, keeps float32 parameters and optimizer
    state, and its losses agree with float32's to bf16 precision."""
    segment = 320 * 20
    wav = np.stack([_voice(segment / SR, 100 + 17 * i, i) for i in range(8)])
    batch = {"wav": wav, "mask": np.ones_like(wav)}
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    results = {}
    for dtype in ("float32", "bfloat16"):
        cfg = _tiny_cfg("dac", manifest, compute_dtype=dtype)
        trainer = build_codec_trainer(cfg, mesh, segment, 8)
        state, metrics = trainer.step(
            trainer.init(jax.random.PRNGKey(0)), batch, jax.random.PRNGKey(1)
        )
        results[dtype] = jax.device_get((state, metrics))
    (s16, m16), m32 = results["bfloat16"], results["float32"][1]
    assert m16["nonfinite"] == 0
    for leaf in jax.tree_util.tree_leaves((s16.params, s16.opt_state, s16.disc_params)):
        assert leaf.dtype in (np.float32, np.int32), leaf.dtype
    for k in ("loss/mel", "loss/l1", "loss/disc", "loss/adv", "loss/feat"):
        np.testing.assert_allclose(m16[k], m32[k], rtol=0.03, err_msg=k)
    with pytest.raises(ConfigError, match="compute_dtype"):
        build_codec_trainer(_tiny_cfg("dac", manifest, compute_dtype="fp8"), mesh, segment, 8)


@pytest.mark.heavy
def test_resume_equals_uninterrupted(manifest, tmp_path):
    cfg = _tiny_cfg("seanet", manifest, steps=6, log_every=1, eval_every=3, checkpoint_every=2)
    cfg.data.batch_size = 8  # over the 8-device data mesh: sharded state through save/restore
    train_codec(cfg, tmp_path / "straight", progress=False)
    train_codec(cfg, tmp_path / "resumed", stop_after=3, progress=False)
    assert RunCheckpointer(tmp_path / "resumed" / "checkpoints").latest_step() == 3
    train_codec(cfg, tmp_path / "resumed", progress=False)
    straight = [r for r in read_metrics(tmp_path / "straight" / "metrics.jsonl")]
    resumed = [r for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl")]
    assert [r["step"] for r in straight] == [r["step"] for r in resumed]
    for a, b in zip(straight, resumed):  # identical losses, bit for bit (wall-clock aside)
        assert {k: v for k, v in a.items() if not k.startswith("perf/")} == {
            k: v for k, v in b.items() if not k.startswith("perf/")
        }
    a = NeuralCodec.load(tmp_path / "straight" / "codec")
    b = NeuralCodec.load(tmp_path / "resumed" / "codec")
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.variables, b.variables)


@pytest.mark.heavy
def test_fine_tuning_starts_from_the_checkpoint(manifest, tmp_path):
    """--config.init_from: the run starts from a saved codec (its weights and EMA codebooks, no
    k-means) with fresh discriminators. The resume test's config (so its programs are cached);
    after one Adam step of lr 3e-4 every weight is within 2 lr of the checkpoint's, where a fresh
    init is ~0.1 away, and the codebooks moved by one EMA update only."""
    cfg = _tiny_cfg("seanet", manifest, steps=1, log_every=1, eval_every=3, checkpoint_every=2)
    cfg.data.batch_size = 8
    variables = init_codec(C.tiny("seanet"), jax.random.PRNGKey(7))  # a seed the run does not use
    books = variables["codebooks"]["quantizer"]
    # a trained codebook's statistics (as conversion writes them): every code counted 50 times, so
    # none is dead and restarted; a fresh init counts each once
    books["cluster_size"] = np.full_like(books["cluster_size"], 50.0)
    books["embed_sum"] = books["embed"] * 50.0
    start = NeuralCodec(C.tiny("seanet"), variables)
    start.save(tmp_path / "start")
    cfg.init_from = str(tmp_path / "start")
    train_codec(cfg, tmp_path / "tuned", progress=False)
    tuned = NeuralCodec.load(tmp_path / "tuned" / "codec").variables
    lr = cfg.optim.lr
    for path, a, b in zip(
        *zip(*jax.tree_util.tree_leaves_with_path(tuned["params"])),
        jax.tree_util.tree_leaves(start.variables["params"]),
    ):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 2 * lr, jax.tree_util.keystr(path)
    books, books0 = tuned["codebooks"]["quantizer"]["embed"], start.variables["codebooks"][
        "quantizer"]["embed"]  # fmt: skip
    scale = np.abs(books0).max()
    assert np.abs(books - books0).max() <= 0.05 * scale  # k-means would replace them

    # the quantizer's training settings may differ (the run's config sets them), the model not
    tiny = C.tiny("seanet")
    retrained = dataclasses.replace(tiny.quantizer, decay=0.9, dropout=0.5)
    assert init_from(str(tmp_path / "start"), dataclasses.replace(tiny, quantizer=retrained))
    other = tmp_path / "other"
    NeuralCodec(C.tiny("dac"), init_codec(C.tiny("dac"), jax.random.PRNGKey(0))).save(other)
    cfg.init_from = str(other)
    with pytest.raises(ConfigError, match=r"init_from=.*other: its codec config differs .*network"):
        train_codec(cfg, tmp_path / "mismatch", progress=False)


@pytest.mark.heavy
def test_overfitting_two_clips_halves_the_mel_loss(manifest):
    """The generator learns: 80 reconstruction-only steps (no discriminator in the program) on one
    fixed batch halve the mel loss."""
    cfg = _tiny_cfg("dac", manifest)
    cfg.optim.lr = 1e-3
    cfg.losses.weights.adv = cfg.losses.weights.feat = 0.0  # reconstruction alone
    segment = 320 * 10
    wav = np.stack([_voice(segment / SR, 120, 0), _voice(segment / SR, 190, 1)])
    batch = {"wav": wav, "mask": np.ones_like(wav)}
    trainer = build_codec_trainer(cfg, make_mesh({"data": 1}, jax.devices()[:1]), segment, 2)
    state, mel = trainer.init(jax.random.PRNGKey(0)), []
    disc0 = jax.device_get(state.disc_params)
    for _ in range(80):
        state, metrics = trainer.step(state, batch, jax.random.PRNGKey(1))
        mel.append(float(metrics["loss/mel"]))
    assert metrics["nonfinite"] == 0
    assert np.median(mel[-10:]) <= 0.5 * mel[0], mel  # median: quantizer dropout varies levels
    # Reconstruction alone leaves the discriminator out of the step: untouched, its schedule
    # still following the step counter.
    assert metrics["loss/disc"] == metrics["grad_norm/discriminator"] == 0
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(state.disc_params), disc0)
    assert _schedule_counts(state.disc_opt_state) == [80]


CRASHER = textwrap.dedent("""
    import os, sys, numpy as np, jax.numpy as jnp
    from nclm.train.checkpoint import RunCheckpointer
    ckpt = RunCheckpointer(sys.argv[1])
    ckpt.save(1, {"w": jnp.ones((4,))}, {"position": 1}, force=True)
    ckpt.wait()
    big = {f"w{i}": jnp.full((2_000_000,), float(i)) for i in range(16)}
    ckpt.save(2, big, {"position": 2}, force=True)   # asynchronous: returns while writing
    os._exit(17)                                      # the process dies mid-write
""")


def test_crash_mid_checkpoint_keeps_the_previous_one(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", CRASHER, str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 17, proc.stderr[-2000:]
    ckpt = RunCheckpointer(tmp_path / "ckpt")
    assert ckpt.latest_step() == 1
    abstract = {"w": jax.ShapeDtypeStruct((4,), np.float32)}
    state, data = ckpt.restore(None, abstract)
    np.testing.assert_array_equal(state["w"], np.ones(4))
    assert data == {"position": 1}
    ckpt.close()
