"""The symbol table: reserved ids, deterministic build, encode/decode, the one-line unknown-symbol
error, and the JSON round trip that keeps the frontend settings."""

import json

import numpy as np
import pytest

from nclm.text.frontend import TextFrontend, make_frontend
from nclm.text.symbols import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIALS,
    SymbolTable,
    UnknownSymbolError,
)

GRAPHEMES = TextFrontend("graphemes", "en-us")


def _table(texts=("hello world", "good night")):
    return SymbolTable.build(GRAPHEMES.tokens_batch(list(texts)), GRAPHEMES)


def test_reserved_ids_and_sorted_symbols():
    table = _table()
    assert (PAD_ID, BOS_ID, EOS_ID) == (0, 1, 2)
    assert table.symbols[:3] == SPECIALS
    assert list(table.symbols[3:]) == sorted(set("hello world good night"))
    assert len(table) == 3 + len(set("hello world good night"))
    # the same set of tokens in any order gives the same table
    assert _table(("good night", "hello world", "hello")) == table


def test_encode_decode():
    table = _table()
    ids = table.encode(GRAPHEMES.tokens("Hello  World"))
    assert ids.dtype == np.int32 and ids.shape == (11,)
    assert ids.min() >= 3
    assert "".join(table.decode(ids)) == "hello world"
    assert table.decode([BOS_ID, *ids[:2], EOS_ID, PAD_ID, PAD_ID]) == ["<bos>", "h", "e", "<eos>"]
    with pytest.raises(ValueError, match="symbol id 999"):
        table.decode([999])


def test_unknown_symbols_are_one_clear_error():
    table = _table()
    with pytest.raises(UnknownSymbolError) as info:
        table.encode(GRAPHEMES.tokens("Quiz? hello"), where="valid.jsonl:3")
    message = str(info.value)
    assert "\n" not in message
    assert "'?', 'q', 'u', 'z'" in message  # every unknown symbol, once, sorted
    assert "valid.jsonl:3" in message
    assert isinstance(info.value, ValueError)


def test_save_load_round_trip(tmp_path):
    table = _table()
    table.save(tmp_path / "symbols.json")
    loaded = SymbolTable.load(tmp_path / "symbols.json")
    assert loaded == table
    assert loaded.frontend == GRAPHEMES
    saved = json.loads((tmp_path / "symbols.json").read_text())
    assert saved["frontend"] == {"kind": "graphemes", "language": "en-us"}
    assert not list(tmp_path.glob(".*"))  # written atomically: no temporary left


@pytest.mark.needs("espeak-ng")
def test_phoneme_table_reproduces_tokenisation(tmp_path):
    frontend = make_frontend("phonemes")
    texts = ["Hello, world!", "Good night, moon."]
    table = SymbolTable.build(frontend.tokens_batch(texts), frontend)
    table.save(tmp_path / "symbols.json")
    loaded = SymbolTable.load(tmp_path / "symbols.json")
    for text in texts:  # the loaded table's own frontend gives the same ids
        np.testing.assert_array_equal(
            loaded.encode(loaded.frontend.tokens(text)), table.encode(frontend.tokens(text))
        )


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such symbol table"):
        SymbolTable.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="bad.json: format is 'other'"):
        SymbolTable.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="reserved"):
        SymbolTable(["a", "<eos>"], GRAPHEMES)
