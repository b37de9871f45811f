"""ShapePrograms: one compiled program per batch shape, compiled ahead, called afterwards."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nclm.train.precompile import ShapePrograms, compile_workers, shape_key


def _step(state, batch):
    h = jnp.tanh(batch["x"] @ state["w"])
    return {"w": state["w"] + 0.1 * h.mean()}, {"loss": (h**2).sum() + batch["n"].sum()}


def _batch(rows, cols=4):
    x = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols) / 10
    return {"x": x, "n": np.ones(rows, np.int32)}


def test_programs_are_compiled_ahead_and_called_by_shape(caplog):
    caplog.set_level(logging.INFO, logger="nclm.train")
    jitted = jax.jit(_step, donate_argnums=0)
    programs = ShapePrograms(jitted, "toy step", batch_arg=1)
    state = {"w": jnp.eye(4)}
    spec = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    batches = [_batch(2), _batch(6)]
    programs.compile([(spec, b) for b in batches + [_batch(2)]], workers=2, progress=False)
    assert len(programs.programs) == 2  # the repeated shape compiles once
    assert sum(m.startswith("compiled toy step for x 2x4, n 2") for m in caplog.messages) == 1

    expected_state, expected = {"w": jnp.eye(4)}, []
    for b in batches:
        expected_state, metrics = jax.jit(_step)(expected_state, b)
        expected.append(metrics)
    for b, want in zip(batches, expected):
        state, metrics = programs(state, b)
        np.testing.assert_allclose(metrics["loss"], want["loss"], rtol=1e-6)
    np.testing.assert_allclose(state["w"], expected_state["w"], rtol=1e-6)
    assert not any("no program was compiled ahead" in m for m in caplog.messages)

    # a shape nobody announced still runs, compiled on the spot with a warning naming it
    state, _ = programs(state, _batch(3))
    assert len(programs.programs) == 3
    assert any("no program was compiled ahead for x 3x4, n 3" in m for m in caplog.messages)


def test_shape_key_sees_shapes_and_dtypes():
    a = {"x": np.zeros((2, 3), np.float32)}
    assert shape_key(a) == shape_key({"x": jax.ShapeDtypeStruct((2, 3), jnp.float32)})
    assert shape_key(a) != shape_key({"x": np.zeros((2, 3), np.int32)})
    assert shape_key(a) != shape_key({"x": np.zeros((3, 2), np.float32)})


def test_compile_workers_reads_the_environment(monkeypatch):
    monkeypatch.setenv("NCLM_COMPILE_WORKERS", "3")
    assert compile_workers() == 3
    monkeypatch.setenv("NCLM_COMPILE_WORKERS", "zero")
    with pytest.raises(ValueError, match="NCLM_COMPILE_WORKERS"):
        compile_workers()
    monkeypatch.delenv("NCLM_COMPILE_WORKERS")
    assert 1 <= compile_workers() <= 8
