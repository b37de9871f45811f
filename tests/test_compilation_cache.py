"""The CLI's persistent compilation cache: a second run of the same command loads its programs
from the cache instead of compiling them (counted from jax's cache events by --cache-stats);
--jax-cache off turns it off."""

import os
import re
import subprocess
import sys

COMMAND = "bench lm-decode --preset tiny --batch 1 --context 4 --steps 2 --repeats 1".split()


def _run(cache: str) -> tuple[int, int]:
    env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # conftest's: the flag must decide
    out = subprocess.run(
        [sys.executable, "-m", "nclm.cli", "--jax-cache", cache, "--cache-stats", *COMMAND],
        env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    line = re.search(r"compilation cache (\S+): (\d+) programs loaded, (\d+) compiled", out.stderr)
    assert line, out.stderr[-2000:]
    assert line.group(1) == cache
    return int(line.group(2)), int(line.group(3))


def test_second_run_loads_every_program_from_the_cache(tmp_path):
    cache = str(tmp_path / "jax")
    loaded, compiled = _run(cache)  # loaded: a program asked for twice in the process
    assert compiled >= 3  # init, AR, NAR at least
    assert os.listdir(cache)
    again_loaded, again_compiled = _run(cache)
    assert again_loaded + again_compiled == loaded + compiled  # the same programs asked for
    # only the few that jax never caches (host callbacks in the random init) compile again
    assert again_compiled <= 8 < compiled


def test_off_disables_the_cache(monkeypatch):
    from nclm.cli import _enable_compilation_cache

    monkeypatch.setenv("JAX_ENABLE_COMPILATION_CACHE", "true")  # restored afterwards
    assert _enable_compilation_cache("off") is None
    assert os.environ["JAX_ENABLE_COMPILATION_CACHE"] == "false"
    import jax

    assert not jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", True)  # the rest of the suite uses it
