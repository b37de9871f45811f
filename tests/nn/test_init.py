"""Host-drawn initializers: a pure function of the key, with the documented distributions."""

import jax
import numpy as np

from nclm.nn import init as initializers


def test_same_key_same_values_different_key_different_values():
    init = initializers.fan_in((0, 1))
    a = jax.jit(lambda k: init(k, (7, 64, 32)))(jax.random.PRNGKey(0))
    b = jax.jit(lambda k: init(k, (7, 64, 32)))(jax.random.PRNGKey(0))
    c = jax.jit(lambda k: init(k, (7, 64, 32)))(jax.random.PRNGKey(1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(a, init(jax.random.PRNGKey(0), (7, 64, 32)))  # jit or not


def test_distributions():
    key = jax.random.PRNGKey(3)
    w = np.asarray(initializers.fan_in((0, 1))(key, (5, 400, 100)))
    assert abs(w.std() * np.sqrt(5 * 400) - 1.0) < 0.02  # variance 1 / fan_in
    assert np.abs(w).max() <= 2.0 / (0.87962566 * np.sqrt(5 * 400)) + 1e-6  # truncated at 2 sigma
    n = np.asarray(initializers.normal(0.02)(key, (1000, 100)))
    assert abs(n.std() - 0.02) < 0.001 and abs(n.mean()) < 0.001
    u = np.asarray(initializers.uniform(0.5)(key, (1000, 100)))
    assert -0.5 <= u.min() and u.max() <= 0.5 and abs(u.std() - 0.5 / np.sqrt(3)) < 0.005
