"""Codec checkpoints on disk: `codec.json` (config, id) + `variables/` (orbax).

    <dir>/codec.json   {"format": "nclm-codec", "version": 1, "codec_id": ..., "config": {...}}
    <dir>/variables/   orbax StandardCheckpointer tree {"params": ..., "codebooks": ...}

The codec id names the config and a digest of the weights, so codes written by one codec are
never silently decoded by another. A checkpoint is written into a temporary sibling directory and
renamed into place, so a crash never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from nclm.atomic import write_dir_atomic
from nclm.codec.config import CodecConfig

FORMAT = "nclm-codec"
VERSION = 1


class CheckpointError(ValueError):
    """A codec checkpoint that is missing, incomplete or of another format."""


def codec_id(cfg: CodecConfig, variables: dict) -> str:
    digest = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    for path, leaf in sorted(
        jax.tree_util.tree_leaves_with_path(variables), key=lambda p: str(p[0])
    ):
        digest.update(str(path).encode())
        digest.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return f"{cfg.name}-{digest.hexdigest()[:12]}"


def save_codec(
    path: str | os.PathLike, cfg: CodecConfig, variables: dict, extra: dict | None = None
) -> str:
    """Writes a codec checkpoint atomically; replaces an existing one. Returns the codec id."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    variables = jax.tree_util.tree_map(np.asarray, variables)
    cid = codec_id(cfg, variables)

    def fill(tmp: Path) -> None:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "variables", variables)
            ckptr.wait_until_finished()
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "codec_id": cid,
            "config": cfg.to_dict(),
            **(extra or {}),
        }
        (tmp / "codec.json").write_text(json.dumps(meta, indent=2) + "\n")

    write_dir_atomic(path, fill)
    return cid


def read_codec_meta(path: str | os.PathLike) -> dict:
    path = Path(path)
    meta_file = path / "codec.json"
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such codec checkpoint directory")
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: not a codec checkpoint (no codec.json)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_file}: invalid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_file}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_codec(path: str | os.PathLike) -> tuple[CodecConfig, dict, str]:
    """Returns (config, variables as numpy arrays, codec id)."""
    path = Path(path).absolute()
    meta = read_codec_meta(path)
    cfg = CodecConfig.from_dict(meta["config"])
    if not (path / "variables").is_dir():
        raise CheckpointError(f"{path}: codec checkpoint has no variables/ directory")
    with ocp.StandardCheckpointer() as ckptr:
        variables = ckptr.restore(path / "variables")
    return cfg, variables, meta["codec_id"]
