"""Evaluation of codecs (and later codec LMs) over a manifest; `nclm codec eval` lives here."""
