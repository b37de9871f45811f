#!/usr/bin/env bash
# The README's test command: set up on a fresh machine, then run the whole suite on the CPU
# (tests/conftest.py fakes 8 CPU devices for the sharding tests). pytest-xdist runs one worker per
# core: most of the suite's time is XLA compiling, which one process does on one core.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
python -m pytest -q -n auto --dist loadfile --durations=15 tests "$@"
