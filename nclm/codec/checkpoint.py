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
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from nclm.codec.config import CodecConfig
from nclm.paths import as_path, write_export

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
    path = as_path(path)
    variables = jax.tree_util.tree_map(np.asarray, variables)
    cid = codec_id(cfg, variables)

    meta = {"format": FORMAT, "version": VERSION, "codec_id": cid, "config": cfg.to_dict()}
    write_checkpoint(path, "variables", variables, "codec.json", {**meta, **(extra or {})})
    return cid


def write_checkpoint(path, tree_name: str, tree: Any, meta_name: str, meta: dict) -> None:
    """An export directory, written atomically (replacing an existing one): the arrays of `tree`
    as an orbax checkpoint in `tree_name`/, and `meta` as JSON in `meta_name`."""

    def fill(tmp: Path) -> None:
        with _this_process_only() as ckptr:
            ckptr.save(tmp / tree_name, tree)
            ckptr.wait_until_finished()
        (tmp / meta_name).write_text(json.dumps(meta, indent=2) + "\n")

    write_export(path, fill, last=meta_name)


def read_tree(path, tree_name: str, what: str) -> Any:
    """The arrays `write_checkpoint` saved in `tree_name`/, as numpy arrays."""
    if not (path / tree_name).is_dir():
        raise CheckpointError(f"{path}: {what} has no {tree_name}/ directory")
    with _this_process_only() as ckptr:
        return ckptr.restore(path / tree_name)


def _this_process_only() -> ocp.StandardCheckpointer:
    """A checkpointer for host (numpy) trees that one process reads or writes alone: orbax's
    default waits for every process at each save and restore, which hangs a multi-process run
    whose process 0 writes the export while the others wait elsewhere."""
    me = jax.process_index()
    only = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.StandardCheckpointer(multiprocessing_options=only)


def read_meta(path: str | os.PathLike, file_name: str, fmt: str, what: str) -> dict:
    """The JSON facts file of a checkpoint directory (codec.json, lm.json), checked for its
    format; one-line CheckpointErrors naming the path."""
    path = as_path(path)
    meta_file = path / file_name
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such {what} directory")
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: not a {what} (no {file_name})")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_file}: invalid JSON ({e})") from None
    if meta.get("format") != fmt:
        raise CheckpointError(f"{meta_file}: format is {meta.get('format')!r}, expected {fmt!r}")
    return meta


def read_codec_meta(path: str | os.PathLike) -> dict:
    return read_meta(path, "codec.json", FORMAT, "codec checkpoint")


def reads_codes_of(meta: dict, codec_id: str) -> bool:
    """Whether the codec of `meta` (its codec.json) decodes codes that codec `codec_id` wrote:
    itself, or the codec whose encoder and codebooks it shares under another decoder (`codes_of`:
    Vocos on EnCodec, `nclm codec convert --from vocos`)."""
    return codec_id in (meta["codec_id"], meta.get("codes_of"))


def load_codec(path: str | os.PathLike) -> tuple[CodecConfig, dict, str]:
    """Returns (config, variables as numpy arrays, codec id)."""
    path = as_path(path)
    meta = read_codec_meta(path)
    cfg = CodecConfig.from_dict(meta["config"])
    return cfg, read_tree(path, "variables", "codec checkpoint"), meta["codec_id"]
