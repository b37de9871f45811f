"""Exported CodecLM checkpoints: `lm.json` (config, symbol table, codec facts) + `params/` (orbax).

    <dir>/lm.json  {"format": "nclm-lm", "version": 1, "config": {...}, "symbols": {...},
                    "codec": {"codec_id", "sample_rate", "frame_rate", "num_codebooks",
                              "codebook_size"}, ...}
    <dir>/params/  orbax StandardCheckpointer tree

Everything `nclm tts` needs besides the codec: the model, how text becomes ids, and which codec
the codes belong to (so a mismatched codec is refused). Written atomically.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from nclm.codec.checkpoint import read_meta, read_tree, write_checkpoint
from nclm.lm.config import LMConfig
from nclm.paths import as_path
from nclm.text.symbols import SymbolTable

FORMAT = "nclm-lm"
VERSION = 1


def save_lm(
    path: str | os.PathLike,
    cfg: LMConfig,
    params: Any,
    symbols: SymbolTable,
    codec: dict,
    extra: dict | None = None,
) -> None:
    params = jax.tree_util.tree_map(np.asarray, params)

    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": cfg.to_dict(),
        "symbols": symbols.to_dict(),
        "codec": codec,
    }
    write_checkpoint(as_path(path), "params", params, "lm.json", {**meta, **(extra or {})})


def read_lm_meta(path: str | os.PathLike) -> dict:
    return read_meta(path, "lm.json", FORMAT, "LM checkpoint")


def load_lm(path: str | os.PathLike) -> tuple[LMConfig, Any, SymbolTable, dict]:
    """Returns (config, params as numpy arrays, symbol table, the whole lm.json)."""
    path = as_path(path)
    meta = read_lm_meta(path)
    params = read_tree(path, "params", "LM checkpoint")
    cfg = LMConfig.from_dict(meta["config"])
    return cfg, params, SymbolTable.from_dict(meta["symbols"], where=str(path / "lm.json")), meta
