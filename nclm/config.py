"""Experiment configs: Python files with `get_config(arg=None)` returning an ml_collections
ConfigDict (big_vision style), overridden from the command line with `--config.a.b=value`.

    cfg = load_config("configs/codec/dac_16khz.py:tiny", ["--config.seed=3"])

Overrides are type-checked against the existing value and unknown keys fail with the key's name.
`save_config` writes the resolved config as JSON beside every output, and `load_config` reads
such a JSON file back, so a run is reproducible from its saved config alone. Model settings
(codec, discriminator, LM) are frozen dataclasses built from their JSON by `dataclass_from_dict`.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names it."""


def _load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"nclm_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a config file's own error, reported with its path
        raise ConfigError(f"{path}: failed to load ({type(e).__name__}: {e})") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config(arg=None)")
    return module


def load_config(spec: str, overrides: list[str] | None = None) -> ml_collections.ConfigDict:
    """`spec` is `file.py`, `file.py:arg` or a saved `config.json`."""
    path_str, _, arg = spec.partition(":") if not spec.endswith(".json") else (spec, "", "")
    path = Path(path_str)
    if not path.is_file():
        raise ConfigError(f"--config: no such file {path}")
    if path.suffix == ".json":
        try:
            cfg = ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON ({e})") from None
    else:
        cfg = _load_module(path).get_config(arg or None)
    for item in overrides or []:
        apply_override(cfg, item)
    return cfg


COMPUTE_DTYPES = {"float32": "float32", "bfloat16": "bfloat16"}


def compute_dtype(name: str, option: str) -> Any:
    """The jnp dtype named by a config string (`float32` or `bfloat16`); `option` names the key."""
    import jax.numpy as jnp

    if name not in COMPUTE_DTYPES:
        raise ConfigError(f"{option}={name!r}: expected one of {sorted(COMPUTE_DTYPES)}")
    return jnp.dtype(COMPUTE_DTYPES[name])


def _tuples(x: Any) -> Any:
    """JSON lists back to the tuples configs use."""
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def _parse(text: str, current: Any, key: str) -> Any:
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None:
            return text
        raise ConfigError(
            f"--config.{key}: cannot parse {text!r} as {type(current).__name__}"
        ) from None
    if current is None:
        return value
    if isinstance(current, bool) != isinstance(value, bool):
        raise ConfigError(f"--config.{key}: expected {type(current).__name__}, got {text!r}")
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    if isinstance(current, tuple) and isinstance(value, list | tuple):
        return tuple(value)
    if not isinstance(value, type(current)):
        raise ConfigError(f"--config.{key}: expected {type(current).__name__}, got {text!r}")
    return value


def apply_override(cfg: ml_collections.ConfigDict, item: str) -> None:
    """Applies one `--config.a.b=value` (or `a.b=value`)."""
    text = item.removeprefix("--").removeprefix("config.")
    key, sep, value = text.partition("=")
    if not sep:
        raise ConfigError(f"override {item!r}: expected --config.key=value")
    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise ConfigError(f"--config.{key}: unknown config key {'.'.join(parts[: i + 1])!r}")
        node = node[part]
    leaf = parts[-1]
    if leaf not in node:
        raise ConfigError(
            f"--config.{key}: unknown config key; known at this level: {sorted(node.keys())}"
        )
    node[leaf] = _parse(value, node[leaf], key)


def to_dict(cfg: ml_collections.ConfigDict) -> dict:
    return json.loads(cfg.to_json_best_effort())


def save_config(cfg: ml_collections.ConfigDict, path: str | os.PathLike) -> None:
    """Writes the resolved config as JSON, atomically."""
    from nclm.paths import write_text

    write_text(path, json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")


def check_keys(cls: type, d: dict, where: str, skip: set[str] = frozenset()) -> dict:
    """`d` if each key names a field of the dataclass `cls` (less `skip`), else a ValueError."""
    known = {f.name for f in dataclasses.fields(cls)} - set(skip)
    unknown = set(d) - known
    if unknown:
        raise ValueError(
            f"unknown {where} config keys {sorted(unknown)}; expected some of {sorted(known)}"
        )
    return d


def dataclass_from_dict(cls: type, d: dict, where: str) -> Any:
    """`cls(**d)` with the keys checked; JSON lists become tuples (frozen configs are hashable,
    as jit's static arguments must be)."""
    d = check_keys(cls, dict(d), where)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def loop_schedule(steps: int, log_every: int, eval_every: int, **more: Any) -> dict:
    """An experiment's `cfg.train` schedule as the training loop reads it (nclm/train/loop.py):
    a checkpoint at every evaluation, the last 3 kept; `more` adds the trainer's own keys."""
    return dict(
        steps=steps,
        log_every=log_every,
        eval_every=eval_every,
        checkpoint_every=eval_every,
        keep_checkpoints=3,
        **more,
    )
