"""Test-wide setup: 8 fake CPU devices (so sharding tests run anywhere) and float32 matmuls."""

import os

# The suite compiles far more than it runs: XLA's CPU backend at optimisation level 0 compiles a
# quarter faster (the same float semantics: no fast-math at either level; every parity test
# passes at both). tests/multiprocess.py passes the same flag to its processes.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests build the same small programs many times (each CLI call compiles anew): cache them on disk.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "jax"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import importlib  # noqa: E402
import importlib.util  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402

# What a test may need beyond the `test` extra, and the line that installs it. A missing one fails
# the tests that need it (never a skip: `pip install -e .[test]` alone must not pass quietly).
INSTALL = {
    "torch": 'pip install "torch==2.13.0" -e ".[parity]" (the CPU wheel; or bash launch/setup.sh)',
    "transformers": 'pip install -e ".[parity]" (or bash launch/setup.sh)',
    "espeak-ng": "apt-get install espeak-ng (launch/setup.sh installs it)",
    "vocos": 'pip install --no-deps "vocos==0.1.0" (or bash launch/setup.sh)',
}


def optional(name: str):
    """The module, or None where it is not installed: for module-level imports in test files that
    also hold tests without it (those tests must run; the others are marked `needs(name)`)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def missing(name: str) -> bool:
    if name == "espeak-ng":  # the program (synth) and the library phonemizer loads (frontend)
        from nclm.text.frontend import espeak_available

        return shutil.which(name) is None or not espeak_available()
    if name == "vocos":  # installed without its dependencies: its __init__ does not import
        return importlib.util.find_spec(name) is None
    return optional(name) is None


class Missing(pytest.fail.Exception):
    """A test's module or program is not installed."""


def require(*names: str) -> None:
    """Fail the calling test (or fixture), naming the install line of each of `names` absent."""
    absent = [n for n in names if missing(n)]
    if absent:
        raise Missing("; ".join(f"{n} is not installed: {INSTALL[n]}" for n in absent), False)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "needs(*names): the test fails (not skips) when a module/program is absent"
    )
    config.addinivalue_line(
        "markers", "heavy: minutes of compiling on a fresh machine; scheduled first"
    )


def pytest_collection_modifyitems(items):
    """The heavy tests first, so their files are handed out first (longest-first packing of the
    xdist workers: a minutes-long file started last leaves the other worker idle).
    `launch/test.sh` runs `--dist loadfile`: one file's tests run in turn on one worker, so the
    later tests of a file load the programs its earlier ones compiled (tests/train/
    test_codec_train.py: the tiny DAC step) from the persistent cache, instead of two workers
    compiling the same program at once and both missing it. (`--dist loadgroup` would group
    across files, but its nodeid suffix does not take with this pytest: the groups split.)"""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)  # stable sort


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    for mark in item.iter_markers("needs"):
        require(*mark.args)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A `needs` check fails before the test's fixtures are built (they may need the module too):
    report it as the test's FAILED, not as an ERROR in its setup."""
    outcome = yield
    if call.when == "setup" and call.excinfo and call.excinfo.errisinstance(Missing):
        outcome.get_result().when = "call"
