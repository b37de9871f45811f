"""CodecLM training: sharded step == single device, shared and separate backbones both learn, a
tiny model overfit on one utterance regenerates its codes with greedy AR + NAR decoding, and
`train_lm` resumed == uninterrupted (then exports an LM checkpoint)."""

import dataclasses
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from nclm.decode.ar import ar_generate
from nclm.decode.nar import nar_generate
from nclm.decode.sampling import SamplingConfig
from nclm.lm import config as C
from nclm.lm.checkpoint import load_lm
from nclm.lm.experiment import lm_experiment
from nclm.sharding import make_mesh
from nclm.text.frontend import TextFrontend
from nclm.text.symbols import SymbolTable
from nclm.train.checkpoint import RunCheckpointer
from nclm.train.lm_train import build_lm_trainer, train_lm
from nclm.train.metrics import read_metrics

Q, V = 3, 16
LM = C.tiny(Q, V, text_vocab_size=24)


def _utterance(seed: int, frames: int, text_len: int):
    rng = np.random.default_rng(seed)
    return rng.integers(3, 24, text_len).astype(np.int32), rng.integers(0, V, (Q, frames))


def _batch(rows, text_bucket=16, frame_bucket=32):
    """rows: [(text ids, codes[Q, T])] -> a padded batch (BOS/EOS around the text)."""
    b = len(rows)
    batch = {
        "text": np.zeros((b, text_bucket), np.int32),
        "text_len": np.zeros(b, np.int32),
        "codes": np.zeros((b, Q, frame_bucket), np.int32),
        "code_len": np.zeros(b, np.int32),
    }
    for i, (text, codes) in enumerate(rows):
        ids = [1, *text.tolist(), 2]
        batch["text"][i, : len(ids)] = ids
        batch["text_len"][i] = len(ids)
        batch["codes"][i, :, : codes.shape[1]] = codes
        batch["code_len"][i] = codes.shape[1]
    return batch


def _cfg(lm=LM, **train):
    cfg = lm_experiment(lm, tiny=True)
    for k, v in train.items():
        cfg.train[k] = v
    return cfg


def test_sharded_step_equals_single_device():
    """All three objectives (AR, NAR, masked with spans and condition dropout) in one step, on
    one device, on data x fsdp and on data x fsdp x tensor. The AR head's 17 columns are padded
    to 24 (vocab_multiple=8) so its vocabulary shards over tensor; parameters and activations
    really are sharded over `tensor` in the compiled step."""
    lm = dataclasses.replace(LM, vocab_multiple=8)
    cfg = _cfg(lm)
    cfg.objective.masked_weight, cfg.objective.mask_span = 1.0, 2
    rows = [_utterance(i, 10 + 3 * i, 4 + i) for i in range(6)] + [
        (np.zeros(0, np.int32), np.zeros((Q, 0)))
    ] * 2  # two empty rows, as a bucket's last batch has
    batch = _batch(rows)
    out = []
    meshes = (
        make_mesh({"data": 1}, jax.devices()[:1]),
        make_mesh({"data": 4, "fsdp": 2}),
        make_mesh({"data": 2, "fsdp": 2, "tensor": 2}),
    )
    for mesh in meshes:
        trainer = build_lm_trainer(cfg, lm, mesh)
        state = trainer.init(jax.random.PRNGKey(0))
        if mesh.shape["tensor"] == 2:
            _assert_tensor_sharded(trainer, state, batch)
        for _ in range(2):
            state, metrics = trainer.step(state, batch, jax.random.PRNGKey(1))
        out.append(jax.device_get((state, metrics)))
    (s1, m1), *sharded = out
    assert m1["nonfinite"] == 0 and m1["ar/tokens"] == sum(10 + 3 * i + 1 for i in range(6))
    for s8, m8 in sharded:
        for k in m1:
            np.testing.assert_allclose(m8[k], m1[k], rtol=1e-5, atol=1e-6, err_msg=k)
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
            s8.params,
            s1.params,
        )


def _assert_tensor_sharded(trainer, state, batch):
    """Parameters: the AR head [D=64, 24] over (fsdp, tensor), the FFN input [layers, D, F] over
    fsdp and tensor. Activations: the traced step constrains the MLP hidden [B, T, F] and the
    logits [B, T, V] to batch over (data, fsdp) and the last dimension over tensor."""
    from jax.sharding import PartitionSpec as P

    params = state.params
    assert params["ar_head"].shape == (64, 24)
    assert params["ar_head"].sharding.spec == P("fsdp", "tensor")
    ffn_in = params["backbone"]["layers"]["block"]["ffn_in"]["kernel"]
    assert ffn_in.sharding.spec == P(None, "fsdp", "tensor")
    assert ffn_in.addressable_shards[0].data.shape == (2, 32, 128)
    text = trainer.step.lower(state, batch, jax.random.PRNGKey(1)).as_text()
    constraints = [line for line in text.splitlines() if "sharding_constraint" in line]
    last_on_tensor = '[{"data", "fsdp"}, {}, {"tensor"}]'
    assert sum(last_on_tensor in line for line in constraints) >= 4, constraints[:8]


@pytest.fixture(scope="module")
def one_device():
    """A float32 single-device trainer and a batch, compiled once for the two tests below."""
    cfg = _cfg()
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    batch = _batch([_utterance(i, 10 + i, 5) for i in range(8)])
    return cfg, build_lm_trainer(cfg, LM, mesh), batch, mesh


def test_a_skipped_step_keeps_the_schedule_in_step(one_device):
    """A non-finite first step changes no weight but still uses up schedule step 0 (state.step
    counts batches): the next, finite step is Adam's first update at the warm-up's lr(1) =
    lr / warmup_steps, so each weight moves by about lr(1), the largest by lr(1) within 2%
    (weight decay adds lr(1) * 0.01 * |w|). A schedule left at step 0 moves nothing (lr(0) = 0)."""
    cfg, trainer, batch, _ = one_device
    state = trainer.init(jax.random.PRNGKey(0))
    good = jax.device_get(state.params)
    poisoned = state.replace(params=jax.tree_util.tree_map(lambda p: p * jnp.nan, state.params))
    state, metrics = trainer.step(poisoned, batch, jax.random.PRNGKey(1))
    assert metrics["nonfinite"] == 1 and int(state.step) == 1
    state, metrics = trainer.step(
        state.replace(params=jax.tree_util.tree_map(jnp.asarray, good)),
        batch,
        jax.random.PRNGKey(2),
    )
    assert metrics["nonfinite"] == 0 and int(state.step) == 2
    moved = jax.tree_util.tree_map(lambda a, b: np.abs(np.asarray(a) - b).max(), state.params, good)
    lr1 = cfg.optim.lr / cfg.optim.warmup_steps
    np.testing.assert_allclose(max(jax.tree_util.tree_leaves(moved)), lr1, rtol=0.02)


def test_bfloat16_step_is_close_to_float32(one_device):
    """--config.train.compute_dtype=bfloat16 (the configs' GPU/TPU setting, dropped at smoke size):
    one step of AR + NAR is finite, keeps float32 parameters and optimizer state, and its losses
    and gradient norm agree with float32's to 2e-3 (measured here: 8e-5 on the losses, 4e-4 on
    the gradient norm)."""
    _, trainer32, batch, mesh = one_device
    trainer16 = build_lm_trainer(_cfg(compute_dtype="bfloat16"), LM, mesh)
    out = {}
    for name, trainer in (("float32", trainer32), ("bfloat16", trainer16)):
        state, metrics = trainer.step(
            trainer.init(jax.random.PRNGKey(0)), batch, jax.random.PRNGKey(1)
        )
        out[name] = jax.device_get((state, metrics))
    (s16, m16), (_, m32) = out["bfloat16"], out["float32"]
    assert m16["nonfinite"] == 0
    for leaf in jax.tree_util.tree_leaves((s16.params, s16.opt_state)):
        assert leaf.dtype in (np.float32, np.int32), leaf.dtype
    for k in ("loss/total", "ar/loss", "nar/loss", "grad_norm"):
        np.testing.assert_allclose(m16[k], m32[k], rtol=2e-3, err_msg=k)


@pytest.mark.parametrize("shared", [True, False])
def test_overfit_one_utterance_regenerates_its_codes(shared):
    """Shared and separate backbones both train: 150 steps on one utterance, then greedy AR from
    a 4-frame prompt reproduces level 1 and EOS exactly, and the NAR the other levels."""
    lm = dataclasses.replace(LM, shared_backbone=shared)
    cfg = _cfg(lm, steps=150)
    cfg.optim.lr, cfg.optim.warmup_steps = 3e-3, 10
    text, codes = _utterance(7, 20, 6)
    batch = _batch([(text, codes)] * 2)
    trainer = build_lm_trainer(cfg, lm, make_mesh({"data": 1}, jax.devices()[:1]))
    state = trainer.init(jax.random.PRNGKey(0))
    losses = []
    for _ in range(150):
        state, metrics = trainer.step(state, batch, jax.random.PRNGKey(1))
        losses.append(float(metrics["ar/loss"]))
    assert losses[-1] < 0.1 * losses[0], losses[::10]
    params = jax.device_get(state.params)

    prompt = 4
    text_in = jnp.asarray(batch["text"][:1])
    text_len = jnp.asarray(batch["text_len"][:1])
    level1, length = ar_generate(
        params,
        text_in,
        text_len,
        jnp.asarray(codes[None, 0, :prompt]),
        jnp.asarray([prompt]),
        jax.random.PRNGKey(0),
        cfg=lm,
        max_new=24,
        sampling=SamplingConfig(temperature=0.0),
    )
    gen = 20 - prompt
    assert int(length[0]) == gen
    np.testing.assert_array_equal(np.asarray(level1[0, :gen]), codes[0, prompt:])
    rest = nar_generate(
        params,
        text_in,
        text_len,
        jnp.asarray(codes[None, :, :prompt]),
        jnp.asarray([prompt]),
        level1,
        length,
        jax.random.PRNGKey(0),
        cfg=lm,
    )
    np.testing.assert_array_equal(np.asarray(rest[0, :, :gen]), codes[:, prompt:])


def test_one_checkpoint_decodes_with_ar_and_masked():
    """AR, NAR and masked objectives on one tree (shared backbone), 300 steps on one utterance:
    greedy AR + NAR and masked decoding (text + 4-frame prompt, target length given, SoundStorm's
    16 iterations for level 1 then 1 per level, guidance on) both regenerate its codes, and so
    does AR level 1 followed by masked levels 2..Q."""
    from nclm.decode.masked import MaskedSchedule, masked_generate

    cfg = _cfg(LM, steps=300)
    cfg.optim.lr, cfg.optim.warmup_steps = 3e-3, 10
    cfg.objective.masked_weight = 1.0
    text, codes = _utterance(11, 20, 6)
    batch = _batch([(text, codes)] * 4)
    trainer = build_lm_trainer(cfg, LM, make_mesh({"data": 1}, jax.devices()[:1]))
    state = trainer.init(jax.random.PRNGKey(0))
    for _ in range(300):
        state, metrics = trainer.step(state, batch, jax.random.PRNGKey(1))
    params = jax.device_get(state.params)
    prompt, gen = 4, 16
    args = (
        jnp.asarray(batch["text"][:1]),
        jnp.asarray(batch["text_len"][:1]),
        jnp.asarray(codes[None, :, :prompt]),
        jnp.asarray([prompt]),
    )
    level1, length = ar_generate(
        params,
        *args[:2],
        args[2][:, 0],
        args[3],
        jax.random.PRNGKey(0),
        cfg=LM,
        max_new=24,
        sampling=SamplingConfig(temperature=0.0),
    )
    assert int(length[0]) == gen
    np.testing.assert_array_equal(np.asarray(level1[0, :gen]), codes[0, prompt:])
    schedule = MaskedSchedule(iterations=(16, 1), temperature=0.5, sample_temperature=0.0)
    masked, passes = masked_generate(
        params,
        *args,
        jnp.asarray([gen]),
        jax.random.PRNGKey(0),
        cfg=LM,
        num_frames=gen,
        schedule=schedule,
    )
    assert int(passes) == 16 + Q - 1
    np.testing.assert_array_equal(np.asarray(masked[0]), codes[:, prompt:])
    rest, passes = masked_generate(
        params,
        *args,
        jnp.asarray([gen]),
        jax.random.PRNGKey(0),
        given=level1[:, None, :gen],
        cfg=LM,
        num_frames=gen,
        schedule=schedule,
        start_level=2,
    )
    assert int(passes) == Q - 1
    np.testing.assert_array_equal(np.asarray(rest[0]), codes[:, prompt:])


def _token_dir(out, num=12):
    """A token corpus in the `nclm tokens extract` format, written directly."""
    from nclm.data.tokens import FORMAT, encode_record, shard_name

    out.mkdir(parents=True, exist_ok=True)
    writer = ArrayRecordWriter(str(out / shard_name(0, 1)), "group_size:1")
    lengths = []
    for i in range(num):
        text, codes = _utterance(i, 12 + 5 * i, 3 + i % 7)
        writer.write(encode_record(codes.astype(np.int16), text, f"s{i % 3}", 0.1, f"u{i}"))
        lengths.append((len(text), codes.shape[1]))
    writer.close()
    table = SymbolTable([chr(97 + j) for j in range(21)], TextFrontend("graphemes"))
    table.save(out / "symbols.json")
    index = {
        "format": FORMAT,
        "version": 1,
        "codec_id": "fake-codec",
        "sample_rate": 16000,
        "frame_rate": 50.0,
        "num_codebooks": Q,
        "codebook_size": V,
        "symbols": "symbols.json",
        "shards": [
            {
                "file": shard_name(0, 1),
                "num_records": num,
                "text_len": [t for t, _ in lengths],
                "frames": [f for _, f in lengths],
            }
        ],
    }
    (out / "index.json").write_text(json.dumps(index))
    return str(out)


def test_resume_equals_uninterrupted_and_exports(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="nclm.train")
    tokens = _token_dir(tmp_path / "tokens")
    cfg = _cfg(dataclasses.replace(LM, text_vocab_size=0), steps=6, log_every=1)
    cfg.train.eval_every, cfg.train.checkpoint_every = 3, 2
    cfg.data.train = cfg.data.valid = tokens
    cfg.data.text_buckets, cfg.data.frame_buckets, cfg.data.max_tokens = (16,), (32, 96), 512
    train_lm(cfg, tmp_path / "straight", progress=False)
    train_lm(cfg, tmp_path / "resumed", stop_after=3, progress=False)
    assert RunCheckpointer(tmp_path / "resumed" / "checkpoints").latest_step() == 3
    train_lm(cfg, tmp_path / "resumed", progress=False)
    a = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    b = read_metrics(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) >= 6
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if not k.startswith("perf/")} == {
            k: v for k, v in y.items() if not k.startswith("perf/")
        }
    assert any("eval/nar_3/top10" in r for r in a)
    # both buckets' programs are compiled before the first step of each of the three calls, and
    # no step meets a shape that was not compiled ahead
    ahead = [m for m in caplog.messages if m.startswith("compiled train step for text 8x16")]
    assert sorted(m.split(", ")[2] for m in ahead) == ["codes 8x3x32"] * 3 + ["codes 8x3x96"] * 3
    assert not any("no program was compiled ahead" in m for m in caplog.messages)
    lm_cfg, params, symbols, meta = load_lm(tmp_path / "resumed" / "lm")
    assert lm_cfg.text_vocab_size == len(symbols) == 24
    assert meta["codec"]["codec_id"] == "fake-codec" and meta["max_audio_frames"] == 95
    _, params_a, _, _ = load_lm(tmp_path / "straight" / "lm")
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params_a)


def test_semantic_condition_trains_with_the_masked_objective():
    """semantic_vocab_size > 0: batches carry semantic ids and the masked objective learns their
    embedding (without condition dropout the null row stays untouched)."""
    lm = dataclasses.replace(LM, semantic_vocab_size=5)
    cfg = _cfg(lm)
    cfg.objective.masked_weight, cfg.objective.cond_drop = 1.0, 0.0
    batch = _batch([_utterance(i, 12, 4) for i in range(2)])
    trainer = build_lm_trainer(cfg, lm, make_mesh({"data": 1}, jax.devices()[:1]))
    state = trainer.init(jax.random.PRNGKey(0))
    before = np.asarray(state.params["semantic_embed"])
    semantic = np.random.default_rng(0).integers(0, 5, batch["code_len"].shape + (32,))
    for _ in range(2):  # the warm-up's learning rate is 0 at step 0
        state, metrics = trainer.step(
            state, {**batch, "semantic": semantic.astype(np.int32)}, jax.random.PRNGKey(1)
        )
    assert metrics["nonfinite"] == 0 and metrics["masked/tokens"] > 0
    changed = np.abs(np.asarray(state.params["semantic_embed"]) - before).max(-1) > 0
    assert changed[:5].any() and not changed[5]


@pytest.mark.parametrize(
    "spec", ["configs/lm/valle.py:smoke", "configs/lm/soundstorm.py:smoke,mixed,semantic=4"]
)
def test_every_lm_config_trains_one_step_at_smoke_size(spec):
    from nclm.config import load_config
    from nclm.lm.experiment import lm_config_from

    cfg = load_config(spec)
    lm = dataclasses.replace(lm_config_from(cfg, 24), num_codebooks=Q, codebook_size=V)
    batch = _batch([_utterance(i, 10 + i, 5) for i in range(8)])
    if lm.semantic_vocab_size:
        batch["semantic"] = np.zeros_like(batch["codes"][:, 0])
    trainer = build_lm_trainer(cfg, lm, make_mesh({"data": -1}))
    state, metrics = trainer.step(trainer.init(jax.random.PRNGKey(0)), batch, jax.random.PRNGKey(1))
    assert metrics["nonfinite"] == 0 and np.isfinite(metrics["loss/total"])
