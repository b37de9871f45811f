"""Decoding for codec language models: token samplers, decode loops."""
