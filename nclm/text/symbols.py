"""The symbol table: text tokens <-> int ids, saved with every token corpus and LM checkpoint.

    ids: 0 <pad>, 1 <bos>, 2 <eos>, then the corpus's symbols in sorted (code point) order

    table = SymbolTable.build(frontend.tokens_batch(texts), frontend)
    ids = table.encode(frontend.tokens(text), where=text)     # int32[L], no bos/eos
    table.save("symbols.json"); table = SymbolTable.load("symbols.json")
    table.frontend.tokens(...)                                 # the same tokenisation later

The table stores the frontend (kind, language) so a checkpoint reproduces its tokenisation.
A token not in the table is an error (`UnknownSymbolError`, naming the symbols and where they
came from), never silently dropped: build the table from the training split and pass it to the
valid/test splits, and rebuild (or pick texts) when a new symbol appears.

    symbols.json  {"format": "nclm-symbols", "version": 1,
                   "frontend": {"kind": "phonemes", "language": "en-us"},
                   "specials": ["<pad>", "<bos>", "<eos>"], "symbols": ["!", ",", ...]}
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from nclm.atomic import write_atomic
from nclm.text.frontend import TextFrontend

FORMAT = "nclm-symbols"
VERSION = 1
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


class UnknownSymbolError(ValueError):
    """Tokens that the symbol table does not hold."""


class SymbolTable:
    def __init__(self, symbols: Sequence[str], frontend: TextFrontend):
        symbols = list(symbols)
        if len(set(symbols)) != len(symbols):
            raise ValueError("symbol table: symbols repeat")
        clash = sorted(set(symbols) & set(SPECIALS))
        if clash:
            raise ValueError(f"symbol table: {clash} are reserved special symbols")
        self.frontend = frontend
        self.symbols = tuple(SPECIALS) + tuple(symbols)
        self._ids = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], frontend: TextFrontend) -> SymbolTable:
        """Every distinct token of `token_lists`, sorted, so the table depends only on the set."""
        seen = set()
        for tokens in token_lists:
            seen.update(tokens)
        return cls(sorted(seen - set(SPECIALS)), frontend)

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SymbolTable)
            and self.symbols == other.symbols
            and self.frontend == other.frontend
        )

    def __repr__(self) -> str:
        return f"SymbolTable({len(self)} symbols, {self.frontend})"

    def encode(self, tokens: Sequence[str], where: str = "") -> np.ndarray:
        """tokens -> int32[L] (no bos/eos). UnknownSymbolError lists every unknown token."""
        try:
            return np.array([self._ids[t] for t in tokens], np.int32)
        except KeyError:
            unknown = sorted({t for t in tokens if t not in self._ids})
            at = f" in {where}" if where else ""
            raise UnknownSymbolError(
                f"unknown symbol(s) {', '.join(map(repr, unknown))}{at}; not in the "
                f"{len(self)}-symbol table ({self.frontend.kind}): rebuild the table from "
                "data that contains them"
            ) from None

    def decode(self, ids: Iterable[int]) -> list[str]:
        """ids -> tokens; padding is dropped, bos/eos are kept as their names."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.symbols):
                raise ValueError(f"symbol id {i}: expected 0..{len(self.symbols) - 1}")
            if i != PAD_ID:
                out.append(self.symbols[i])
        return out

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "frontend": self.frontend.to_dict(),
            "specials": list(SPECIALS),
            "symbols": list(self.symbols[len(SPECIALS) :]),
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "symbol table") -> SymbolTable:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"{where}: format is {got!r}, expected {FORMAT!r}")
        if d.get("version") != VERSION:
            raise ValueError(f"{where}: version {d.get('version')!r}, expected {VERSION}")
        if tuple(d.get("specials", ())) != SPECIALS:
            raise ValueError(f"{where}: specials {d.get('specials')!r}, expected {SPECIALS}")
        symbols = d.get("symbols")
        if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
            raise ValueError(f"{where}: 'symbols' must be a list of strings")
        frontend = d.get("frontend")
        if not isinstance(frontend, dict):
            raise ValueError(f"{where}: 'frontend' must be an object with kind and language")
        return cls(symbols, TextFrontend.from_dict(frontend))

    def save(self, path: str | os.PathLike) -> None:
        """Writes the table as JSON atomically."""
        write_atomic(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> SymbolTable:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such symbol table (expected symbols.json)")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a JSON symbol table ({e})") from None
        return cls.from_dict(d, where=str(path))
