"""Text frontends: real espeak-ng phonemes (plausible IPA, stress and punctuation tokens, word
boundaries), determinism, batch == one at a time, graphemes, normalisation and the errors."""

import logging

import pytest

from nclm.text import frontend as frontend_module
from nclm.text.frontend import (
    WORD,
    FrontendError,
    TextFrontend,
    make_frontend,
    normalize_text,
)

# espeak-ng is a setup requirement (launch/setup.sh installs it): a missing one fails, not skips.
needs_espeak = pytest.mark.needs("espeak-ng")
SENTENCES = ["Hello, world!", "The quick brown fox jumps over the lazy dog."]


@needs_espeak
def test_phonemes_are_plausible_ipa():
    tokens = make_frontend("phonemes").tokens("Hello, world!")
    assert "".join(tokens) == "həlˈoʊ, wˈɜːld!"
    # stress marks and punctuation are tokens of their own, length marks stay on the vowel
    assert tokens == ["h", "ə", "l", "ˈ", "oʊ", ",", WORD, "w", "ˈ", "ɜː", "l", "d", "!"]
    fox = make_frontend("phonemes").tokens(SENTENCES[1])
    assert fox[:2] == ["ð", "ə"] and fox[-1] == "."
    assert fox.count(WORD) == 8  # nine words
    assert {"ˈ", "k", "w", "ɪ", "b", "ɹ", "aʊ", "f", "s", "z"} <= set(fox)


@needs_espeak
def test_phonemes_deterministic_and_batch_equals_single():
    frontend = TextFrontend("phonemes", "en-us")
    batch = frontend.tokens_batch(SENTENCES)
    assert batch == [frontend.tokens(s) for s in SENTENCES]
    assert batch == frontend.tokens_batch(SENTENCES)
    assert frontend.tokens_batch([]) == []


@needs_espeak
def test_phonemes_normalise_whitespace_and_punctuation_runs():
    frontend = make_frontend("phonemes")
    assert frontend.tokens("  Hello,\n\t world!  ") == frontend.tokens("Hello, world!")
    tokens = frontend.tokens('"Wait..." she said.')
    assert tokens[0] == '"' and tokens.count(".") == 4
    assert WORD + WORD not in "".join(tokens)  # no empty words


def test_graphemes():
    frontend = make_frontend("graphemes")
    assert frontend.tokens("  Hello,   World! ") == list("hello, world!")
    assert frontend.tokens("Cafe\u0301") == list("café")  # NFC: one code point for é
    assert frontend.tokens_batch(["A b", "C"]) == [["a", WORD, "b"], ["c"]]


@pytest.mark.parametrize("kind", ["graphemes", pytest.param("phonemes", marks=needs_espeak)])
def test_empty_text_is_an_error(kind):
    with pytest.raises(ValueError, match="empty text"):
        make_frontend(kind).tokens(" \n\t ")
    with pytest.raises(ValueError, match="empty text"):
        make_frontend(kind).tokens_batch(["fine", ""])


def test_normalize_text():
    assert normalize_text("  a \n b\t\tc ") == "a b c"


def test_auto_falls_back_to_graphemes_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(frontend_module, "espeak_available", lambda: False)
    with caplog.at_level(logging.WARNING, "nclm.text.frontend"):
        frontend = make_frontend("auto")
    assert frontend.kind == "graphemes"
    assert "espeak-ng not found" in caplog.text
    with pytest.raises(FrontendError, match="espeak-ng not found.*graphemes"):
        make_frontend("phonemes")


@needs_espeak
def test_auto_picks_phonemes_and_bad_settings_fail():
    assert make_frontend("auto").kind == "phonemes"
    with pytest.raises(FrontendError, match="no language 'xx-nowhere'"):
        make_frontend("phonemes", "xx-nowhere")
    with pytest.raises(FrontendError, match="kind 'letters'"):
        TextFrontend("letters")


@needs_espeak
def test_english_coverage_list_holds_the_phonemes_of_unseen_words():
    """Tables include COVERAGE_TEXT's tokens, so held-out words bring no unknown phonemes."""
    covered = set(make_frontend("phonemes").coverage_tokens())
    unseen = "Joyful voices measure the azure leisure of a thousand yachts and ninety judges."
    assert set(make_frontend("phonemes").tokens(unseen)) <= covered
    assert set(TextFrontend("graphemes").tokens(unseen)) <= set(
        TextFrontend("graphemes").coverage_tokens()
    )
    assert TextFrontend("graphemes", "de").coverage_tokens() == []
