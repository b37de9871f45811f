#!/usr/bin/env bash
# The README's test command: set up on a fresh machine, then run the whole suite on the CPU
# (tests/conftest.py fakes 8 CPU devices for the sharding tests).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
python -m pytest -q tests "$@"
