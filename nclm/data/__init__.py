"""Manifests (JSONL), corpus builders, a local synthetic corpus and the grain audio pipeline."""
