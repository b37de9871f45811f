"""Text frontends: text -> a list of string tokens (the symbol table then maps them to ids).

    frontend = make_frontend("auto")      # phonemes if espeak-ng works, else graphemes
    frontend.tokens("Hello, world!")
    # phonemes:  ['h', 'ə', 'l', 'ˈ', 'oʊ', ',', ' ', 'w', 'ˈ', 'ɜː', 'l', 'd', '!']
    # graphemes: ['h', 'e', 'l', 'l', 'o', ',', ' ', 'w', 'o', 'r', 'l', 'd', '!']

Both kinds first normalise the text: Unicode NFC, strip, collapse whitespace; a text that is then
empty raises ValueError("empty text ..."). The word-boundary token is a single space `WORD` in
both kinds, so `"".join(tokens)` reads naturally.

Phonemes: espeak-ng through `phonemizer` (its maintained Python wrapper). A phone is what
phonemizer separates (length marks stay on their vowel: `ɜː`); stress marks `ˈ ˌ` are tokens of
their own placed before the stressed vowel, so the vocabulary does not multiply every vowel by
three stress levels. Punctuation (phonemizer's default marks) is kept, one token per character.
Language-switch flags such as `(fr)` are removed. A whole list is phonemized in one call
(`tokens_batch`), since espeak-ng's per-call overhead dominates for single sentences.

Graphemes: the lower-cased characters of the normalised text (space is the word boundary); used
when espeak-ng is not installed.
"""

from __future__ import annotations

import functools
import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

KINDS = ("phonemes", "graphemes")
WORD = " "  # word-boundary token of both kinds

# English words that between them use every phoneme espeak-ng's English voices emit (vowels,
# diphthongs, r-coloured vowels, syllabic consonants, stress marks) and every letter and common
# punctuation mark. A symbol table built from a small corpus plus these knows the phonemes that
# only held-out text happens to use (their embeddings are simply untrained).
COVERAGE_TEXT = (
    "bit beat bet bat but about father bird hot bought book boot bay buy boy bough boat bear "
    "beer car cure tour poor fire hour or our air ear sure hurt sitter button bottle rhythm "
    "anemone the thin this ship measure church judge sing yes we what which hat loch quick "
    "zoo vex jump fox lazy dog garden kitten ought year noisy water better little three "
    'eleven twelve, twenty: (one) two; three? four! five\'s "six" seven-eight. '
    "abcdefghijklmnopqrstuvwxyz 0123456789"
)
STRESS = ("ˈ", "ˌ")  # primary, secondary stress (IPA)
_PHONE_SEP, _WORD_SEP = " ", " | "  # what phonemizer is asked to put between phones and words
_INSTALL = "install the espeak-ng package (apt/brew install espeak-ng) or use graphemes"


class FrontendError(ValueError):
    """A frontend that cannot be used here (espeak-ng missing, unknown kind or language)."""


def normalize_text(text: str) -> str:
    """NFC, stripped, whitespace runs collapsed to one space."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def _checked(text: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    norm = normalize_text(text)
    if not norm:
        raise ValueError(f"empty text {text!r}: expected at least one non-space character")
    return norm


@dataclass(frozen=True)
class TextFrontend:
    kind: str = "phonemes"  # "phonemes" | "graphemes"
    language: str = "en-us"  # espeak-ng voice (phonemes only; kept for graphemes as a record)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise FrontendError(f"text frontend kind {self.kind!r}: expected one of {KINDS}")
        if not isinstance(self.language, str) or not self.language:
            raise FrontendError(f"text frontend language {self.language!r}: expected e.g. 'en-us'")

    def tokens(self, text: str) -> list[str]:
        return self.tokens_batch([text])[0]

    def coverage_tokens(self) -> list[str]:
        """Tokens of COVERAGE_TEXT for English, [] for other languages (no such list yet)."""
        if not self.language.startswith("en"):
            return []
        return self.tokens(COVERAGE_TEXT)

    def tokens_batch(self, texts: Sequence[str]) -> list[list[str]]:
        """One token list per text; phonemes come from a single phonemizer call."""
        norms = [_checked(t) for t in texts]
        if self.kind == "graphemes":
            return [list(t.lower()) for t in norms]
        if not norms:
            return []
        separator = _separator()
        phonemized = _backend(self.language).phonemize(norms, separator=separator, strip=True)
        if len(phonemized) != len(norms):  # phonemizer keeps one output line per input line
            raise RuntimeError(f"phonemizer returned {len(phonemized)} lines for {len(norms)}")
        out = []
        for text, phones in zip(norms, phonemized):
            tokens = _split_phonemes(phones)
            if not tokens:
                raise ValueError(f"text {text!r}: espeak-ng ({self.language}) gave no phonemes")
            out.append(tokens)
        return out

    def to_dict(self) -> dict:
        return {"kind": self.kind, "language": self.language}

    @classmethod
    def from_dict(cls, d: dict) -> TextFrontend:
        return cls(d.get("kind", ""), d.get("language", "en-us"))


def _punctuation() -> frozenset[str]:
    from phonemizer.punctuation import Punctuation

    return frozenset(Punctuation.default_marks())


def _split_phonemes(phonemized: str) -> list[str]:
    """'h ə l ˈoʊ, | w ˈɜː l d!' -> ['h','ə','l','ˈ','oʊ',',',' ','w','ˈ','ɜː','l','d','!'].
    phonemizer glues restored punctuation to the neighbouring phone, hence the peeling."""
    marks = _punctuation()
    tokens: list[str] = []
    for word in phonemized.split(_WORD_SEP.strip()):
        word_tokens: list[str] = []
        for phone in word.split():
            current = ""
            for char in phone:
                if char in marks or char in STRESS:
                    if current:
                        word_tokens.append(current)
                        current = ""
                    word_tokens.append(char)
                else:
                    current += char
            if current:
                word_tokens.append(current)
        if word_tokens:
            if tokens:
                tokens.append(WORD)
            tokens.extend(word_tokens)
    return tokens


@functools.cache
def _separator():
    from phonemizer.separator import Separator

    return Separator(phone=_PHONE_SEP, word=_WORD_SEP, syllable="")


@functools.lru_cache(maxsize=8)
def _backend(language: str):
    """One espeak-ng backend per language (creating one loads the library: ~0.1 s)."""
    check_espeak(language)
    from phonemizer.backend import EspeakBackend

    quiet = logging.getLogger(f"{__name__}.phonemizer")
    quiet.setLevel(logging.ERROR)  # its word-count mismatch warnings are expected (punctuation)
    return EspeakBackend(
        language,
        preserve_punctuation=True,
        with_stress=True,
        language_switch="remove-flags",
        words_mismatch="ignore",
        logger=quiet,
    )


@functools.cache
def espeak_available() -> bool:
    """Whether phonemizer is installed and finds the espeak-ng library."""
    try:
        from phonemizer.backend import EspeakBackend

        return bool(EspeakBackend.is_available())
    except (ImportError, OSError, RuntimeError):
        return False


def check_espeak(language: str = "en-us") -> None:
    """Raises FrontendError (one line) unless espeak-ng can phonemize `language`."""
    if not espeak_available():
        raise FrontendError(f"phonemes: espeak-ng not found through phonemizer; {_INSTALL}")
    from phonemizer.backend import EspeakBackend

    if language not in EspeakBackend.supported_languages():
        raise FrontendError(
            f"phonemes: espeak-ng has no language {language!r} (see `espeak-ng --voices`)"
        )


def make_frontend(kind: str = "auto", language: str = "en-us") -> TextFrontend:
    """ "phonemes" (FrontendError if espeak-ng is unusable), "graphemes", or "auto": phonemes when
    espeak-ng works, else graphemes with a logged warning."""
    if kind == "auto":
        if espeak_available():
            kind = "phonemes"
        else:
            logger.warning("espeak-ng not found: using graphemes (%s for phonemes)", _INSTALL)
            kind = "graphemes"
    frontend = TextFrontend(kind, language)
    if kind == "phonemes":
        check_espeak(language)
    return frontend
