"""Evaluators come from the optional `eval` extra; a missing one is one line naming it.

    jiwer = require("jiwer", "WER/CER alignment")

`evaluator_version(dist)` is the installed distribution's version, recorded next to every number
an evaluator produced, and `file_digest` identifies the weights it loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import warnings
from types import ModuleType

INSTALL = "pip install 'nclm[eval]'"


class MissingEvaluator(ValueError):
    """An evaluator package that is not installed; the message names the extra to install."""


def require(module: str, purpose: str) -> ModuleType:
    """Imports `module` (its import-time deprecation noise silenced) or raises MissingEvaluator."""
    try:
        with warnings.catch_warnings():
            # webrtcvad (under resemblyzer) imports pkg_resources; scipy and librosa warn too
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return importlib.import_module(module)
    except ImportError as e:
        raise MissingEvaluator(
            f"{purpose} needs the Python package {module.split('.')[0]!r} ({e}); "
            f"install the evaluators with: {INSTALL}"
        ) from None


def evaluator_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def file_digest(*paths: str | os.PathLike) -> str:
    """sha256 (first 16 hex digits) over the files' bytes, in the order given."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]
