"""SpeechX multi-task training on the one parameter tree: the sharded step with every task equals
one device; a tiny model overfit on one example per task regenerates every target exactly with
greedy AR + NAR and with masked decoding, and the task token decides the output (the same
mixture gives the speech under <ns> and the noise under <sr>); warm starts keep a trained LM
but leave the new task-token rows fresh."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nclm.decode.ar import ar_generate
from nclm.decode.masked import MaskedSchedule, masked_generate
from nclm.decode.nar import nar_generate
from nclm.decode.sampling import SamplingConfig
from nclm.lm import config as C
from nclm.lm import speechx as sx
from nclm.lm.experiment import lm_experiment
from nclm.sharding import make_mesh
from nclm.train.lm_train import build_lm_trainer, warm_start

Q, V = 3, 16
STEPS = 200
LM = C.tiny(Q, V, text_vocab_size=24)


def _codes(seed, frames):
    return np.random.default_rng(seed).integers(0, V, (Q, frames)).astype(np.int32)


def _examples():
    """One example per task; ns and sr share their mixture (and have no text)."""
    text = lambda seed, n: np.random.default_rng(seed).integers(3, 24, n)  # noqa: E731
    mix, speech, noise = _codes(1, 9), _codes(2, 9), _codes(3, 9)
    pre, post = _codes(4, 3), _codes(5, 3)
    edited = np.concatenate([pre, _codes(6, 4), post], axis=1)
    return [
        sx.layout_example("tts", text(0, 5), _codes(7, 10), Q),
        sx.layout_example("ns", None, speech, Q, mixture=mix),
        sx.layout_example("sr", None, noise, Q, mixture=mix),
        sx.layout_example(
            "tse", text(1, 4), _codes(8, 8), Q, enrol=_codes(9, 4), mixture=_codes(10, 8)
        ),
        sx.layout_example("cse", text(2, 6), edited, Q, pre=pre, post=post),
        sx.layout_example(
            "nse", text(3, 6), _codes(11, 10), Q, pre=_codes(11, 10)[:, :3], mid=_codes(12, 3),
            post=_codes(11, 10)[:, -3:],
        ),
    ]  # fmt: skip


def _batch(examples, num_slots=32, num_frames=16):
    batch = sx.stack_prefixes(examples, num_slots)
    codes = np.zeros((len(examples), Q, num_frames), np.int32)
    for b, ex in enumerate(examples):
        codes[b, :, : ex.target.shape[1]] = ex.target
    batch.update(
        codes=codes,
        code_len=np.array([ex.target.shape[1] for ex in examples], np.int32),
        task=np.array([ex.task for ex in examples], np.int32),
        target_start=np.array([ex.target_start for ex in examples], np.int32),
    )
    return batch


def _cfg(steps=300):
    cfg = lm_experiment(LM, tiny=True)
    cfg.train.steps = steps
    cfg.optim.lr, cfg.optim.warmup_steps = 4e-3, 10
    cfg.objective.masked_weight = 1.0
    return cfg


def test_sharded_multitask_step_equals_single_device():
    batch = _batch(_examples() + _examples()[:2])  # 8 rows: every task, 4 x 2 shards
    out = []
    for mesh in (make_mesh({"data": 1}, jax.devices()[:1]), make_mesh({"data": 4, "fsdp": 2})):
        trainer = build_lm_trainer(_cfg(), LM, mesh, multitask=True)
        state = trainer.init(jax.random.PRNGKey(0))
        for _ in range(2):
            state, metrics = trainer.step(state, batch, jax.random.PRNGKey(1))
        out.append(jax.device_get((state, metrics)))
    (s1, m1), (s8, m8) = out
    assert m1["nonfinite"] == 0
    for k in m1:
        np.testing.assert_allclose(m8[k], m1[k], rtol=1e-5, atol=1e-6, err_msg=k)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s8.params, s1.params
    )


@pytest.fixture(scope="module")
def overfit():
    examples = _examples()
    # TTS three times: its masked objective draws a random prompt per step, the slowest to learn
    batch = _batch(examples + examples[:1] * 2)
    trainer = build_lm_trainer(_cfg(STEPS), LM, make_mesh({"data": 1}, jax.devices()[:1]), True)
    state = trainer.init(jax.random.PRNGKey(0))
    for _ in range(STEPS):
        state, metrics = trainer.step(state, batch, jax.random.PRNGKey(1))
    sums = jax.device_get(trainer.eval(state.params, _batch(examples + examples[:2])))
    return examples, _batch(examples), jax.device_get(state.params), sums


def test_validation_reports_each_task(overfit):
    """Per-task validation sums (eval/<task>/<objective>): each task's rows and only them,
    and after the overfit every task's AR and NAR top-1 accuracy is 1."""
    examples, _, _, sums = overfit
    for k, task in enumerate(sx.TASKS):
        ex = examples[k]
        frames = ex.target.shape[1] - ex.target_start + 1  # + EOS
        rows = 2 if k < 2 else 1  # the batch repeats tts and ns
        assert sums[f"{task}/ar/tokens"] == rows * frames, task
        for name in ("ar", "nar"):
            top1 = sums[f"{task}/{name}/top1"] / sums[f"{task}/{name}/tokens"]
            assert top1 == pytest.approx(1.0), (task, name)


def _inputs(examples, batch):
    """Decoder inputs; the prompt is the known start of each target: an edit's pre frames, and
    for TTS (VALL-E) the first 3 frames of the utterance as the voice prompt."""
    starts = np.array([ex.target_start or (3 if ex.task == 0 else 0) for ex in examples])
    prompt = np.zeros((len(examples), Q, max(starts.max(), 1)), np.int32)
    for b, ex in enumerate(examples):
        prompt[b, :, : starts[b]] = ex.target[:, : starts[b]]
    prefix = sx.Prefix(jnp.asarray(batch["prefix_kind"]), jnp.asarray(batch["prefix_codes"]))
    text, text_len = jnp.asarray(batch["text"]), jnp.asarray(batch["text_len"])
    return text, text_len, jnp.asarray(prompt), jnp.asarray(starts, jnp.int32), prefix


def test_overfit_regenerates_every_task_with_ar_and_nar(overfit):
    examples, batch, params, _ = overfit
    text, text_len, prompt, starts, prefix = _inputs(examples, batch)
    level1, length = ar_generate(
        params, text, text_len, prompt[:, 0], starts, jax.random.PRNGKey(0), prefix=prefix,
        cfg=LM, max_new=16, sampling=SamplingConfig(temperature=0.0),
    )  # fmt: skip
    rest = nar_generate(
        params, text, text_len, prompt, starts, level1, length, jax.random.PRNGKey(0),
        prefix=prefix, cfg=LM,
    )  # fmt: skip
    for b, ex in enumerate(examples):
        want = ex.target[:, int(starts[b]) :]
        assert int(length[b]) == want.shape[1], sx.TASKS[ex.task]
        np.testing.assert_array_equal(np.asarray(rest[b, :, : want.shape[1]]), want, sx.TASKS[b])
    # the task token decides: same mixture, speech under <ns>, noise under <sr>
    assert not np.array_equal(examples[1].target, examples[2].target)


def test_overfit_regenerates_every_task_with_masked_decoding(overfit):
    examples, batch, params, _ = overfit
    text, text_len, prompt, starts, prefix = _inputs(examples, batch)
    gen_len = jnp.asarray([ex.target.shape[1] for ex in examples], jnp.int32) - starts
    schedule = MaskedSchedule(iterations=(8, 1), guidance="none", sample_temperature=0.0)
    codes, _ = masked_generate(
        params, text, text_len, prompt, starts, gen_len, jax.random.PRNGKey(0), prefix=prefix,
        cfg=LM, num_frames=16, schedule=schedule,
    )  # fmt: skip
    wrong = {}
    for b, ex in enumerate(examples):
        want = ex.target[:, int(starts[b]) :]
        got = np.asarray(codes[b, :, : want.shape[1]])
        if not np.array_equal(got, want):
            wrong[sx.TASKS[ex.task]] = (got, want)
    assert not wrong, wrong


def test_warm_start_keeps_trained_rows_and_fresh_task_tokens():
    from nclm.lm.model import init_lm

    fresh = init_lm(LM, jax.random.PRNGKey(0))["params"]
    other = nn.meta.unbox(init_lm(LM, jax.random.PRNGKey(1))["params"])
    trained = jax.tree.map(lambda x: np.asarray(x) + 1.0, other)
    out = nn.meta.unbox(warm_start(fresh, trained))
    np.testing.assert_array_equal(out["text_embed"], trained["text_embed"])
    np.testing.assert_array_equal(out["task_embed"][0], trained["task_embed"][0])
    fresh_rows = nn.meta.unbox(fresh)["task_embed"][1:]
    np.testing.assert_array_equal(out["task_embed"][1:], fresh_rows)


def test_speechx_config_loads():
    """configs/lm/speechx.py: every task weighted, init_from settable, the quickstart LM's shape
    (so the quickstart's TTS checkpoint can start it); its step is the one tested above."""
    from nclm.config import load_config
    from nclm.tasks.simulate import SimConfig

    cfg = load_config("configs/lm/speechx.py", ["--config.init_from=runs/lm"])
    sim = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.simulation.to_dict().items()}
    assert set(SimConfig(**sim).weights) == set(sx.TASKS) and cfg.init_from == "runs/lm"
    quick = load_config("configs/lm/quickstart.py")
    assert cfg.lm.to_dict() == quick.lm.to_dict()
