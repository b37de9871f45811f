"""Paths that may name a cloud bucket (`gs://`, `s3://`): TPU VMs have no shared disk, so a pod
run keeps its work directory in a bucket every host can reach. `os.path` would turn
`gs://b/run` into `<cwd>/gs:/b/run`; `etils.epath` (what orbax uses) keeps the URI and reads and
writes through fsspec (gcsfs / s3fs where installed).

    workdir = as_path("gs://bucket/runs/valle")      # or a local path, made absolute
    write_text(workdir / "config.json", text)        # whole, never half-written
    append_line(workdir / "metrics.jsonl", line)
    write_export(workdir / "lm", fill)               # an export directory, complete or absent

Local writes go to a temporary sibling and are renamed into place. A bucket has no rename and no
append, but an object appears whole when its upload ends: text is written directly, a line is
appended by rewriting the (small) object, and an export directory is built locally, uploaded,
and marked complete by its metadata file, which is uploaded last.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from etils import epath

REMOTE = ("gs://", "s3://", "az://")


def is_remote(path: str | os.PathLike) -> bool:
    return os.fspath(path).startswith(REMOTE)


def as_path(path: str | os.PathLike) -> Path | epath.Path:
    """A bucket URI as an epath.Path (the URI kept); anything else as an absolute local Path."""
    if is_remote(path):
        return epath.Path(os.fspath(path))
    return Path(path).absolute()


def uri(path: str | os.PathLike) -> str:
    """The string to hand to libraries (orbax, TensorBoard): a URI stays a URI."""
    return os.fspath(path) if is_remote(path) else os.path.abspath(path)


def write_text(path, text: str) -> None:
    if is_remote(path):
        as_path(path).write_text(text)
        return
    from nclm.atomic import write_atomic

    write_atomic(path, text)


def append_line(path, line: str) -> None:
    """Appends `line` (a newline is added) to a text file, creating it."""
    path = as_path(path)
    if not is_remote(path):
        with path.open("a") as f:
            f.write(line + "\n")
        return
    before = path.read_text() if path.exists() else ""
    path.write_text(before + line + "\n")


def write_export(path, fill: Callable[[Path], None], last: str) -> None:
    """An export directory filled by `fill(local_dir)`. Locally it is renamed into place whole;
    in a bucket its files are uploaded with `last` (the metadata file readers check) at the end,
    after the old directory is removed."""
    if not is_remote(path):
        from nclm.atomic import write_dir_atomic

        write_dir_atomic(path, fill)
        return
    target = as_path(path)
    with tempfile.TemporaryDirectory(prefix="nclm-export-") as tmp:
        local = Path(tmp)
        fill(local)
        if target.exists():
            target.rmtree()
        files = sorted(p for p in local.rglob("*") if p.is_file())
        for f in sorted(files, key=lambda p: p.relative_to(local).as_posix() == last):
            dest = target / f.relative_to(local).as_posix()
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.read_bytes())
