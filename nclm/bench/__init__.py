"""Benchmarks: throughput of nclm against the reference implementations, in one process.

    python -m nclm.bench.codec --model encodec_24khz      # or `nclm bench codec ...`

Figures go to BENCHMARKS.md (how they are recorded is explained there); tests check only that a
benchmark runs, never how fast.
"""
