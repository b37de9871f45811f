"""Exported CodecLM checkpoints: `lm.json` (config, symbol table, codec facts) + `params/` (orbax).

    <dir>/lm.json  {"format": "nclm-lm", "version": 1, "config": {...}, "symbols": {...},
                    "codec": {"codec_id", "sample_rate", "frame_rate", "num_codebooks",
                              "codebook_size"}, ...}
    <dir>/params/  orbax StandardCheckpointer tree

Everything `nclm tts` needs besides the codec: the model, how text becomes ids, and which codec
the codes belong to (so a mismatched codec is refused). Written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from nclm.atomic import write_dir_atomic
from nclm.codec.checkpoint import CheckpointError
from nclm.lm.config import LMConfig
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

    def fill(tmp: Path) -> None:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "params", params)
            ckptr.wait_until_finished()
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "config": cfg.to_dict(),
            "symbols": symbols.to_dict(),
            "codec": codec,
            **(extra or {}),
        }
        (tmp / "lm.json").write_text(json.dumps(meta, indent=2) + "\n")

    write_dir_atomic(path, fill)


def read_lm_meta(path: str | os.PathLike) -> dict:
    path = Path(path)
    meta_file = path / "lm.json"
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: not an LM checkpoint (no lm.json)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_file}: invalid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_file}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_lm(path: str | os.PathLike) -> tuple[LMConfig, Any, SymbolTable, dict]:
    """Returns (config, params as numpy arrays, symbol table, the whole lm.json)."""
    path = Path(path).absolute()
    meta = read_lm_meta(path)
    if not (path / "params").is_dir():
        raise CheckpointError(f"{path}: LM checkpoint has no params/ directory")
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(path / "params")
    cfg = LMConfig.from_dict(meta["config"])
    return cfg, params, SymbolTable.from_dict(meta["symbols"], where=str(path / "lm.json")), meta
