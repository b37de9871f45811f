"""Word and character error rates after one documented English text normalisation.

    normalize_english("Dr. Smith paid $5 on the 2nd of May, 1990!")
        -> "doctor smith paid five dollars on the second of may nineteen ninety"
    errors = word_errors("The cat sat.", "the cat sat down")   # ErrorCounts(0, 0, 1, 3)
    errors.rate                                                  # 1 / 3

The normalisation (`normalize_english`), applied to both the reference transcript and the
recognizer's output, in this order:

1. Unicode NFKD, combining marks dropped (café -> cafe); curly quotes -> straight ones.
2. Numbers become words: "1,000" -> one thousand; "3.5" -> three point five; ordinals "2nd"
   -> second; "$5" -> five dollars, "5%" -> five percent; four-digit numbers 1100..1999 and
   2010..2099 are read as years (1990 -> nineteen ninety, 1900 -> nineteen hundred, 2024 ->
   twenty twenty four), every other integer as a cardinal without "and".
3. "&" -> and; the titles mr, mrs, dr (with or without a dot) -> mister, missus, doctor.
4. Lower case; every character that is not a letter, a digit or an apostrophe inside a word
   becomes a space (hyphens split words: "twenty-one" -> twenty one); whitespace collapses.

Words are then aligned by jiwer (Levenshtein over words or characters), never by hand, and a
transcript is scored as words separated by spaces (the fault in Amphion's WER was to strip the
spaces first, which scores every utterance 0 or 1). CER is over the normalised characters,
spaces included. A reference that normalises to nothing is an error: WER is undefined there.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from nclm.eval.extra import require

NORMALISATION = "nclm-en-1"  # recorded with every WER; bump when the rules above change

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
    "nine": "ninth", "twelve": "twelfth",
}  # fmt: skip
_TITLES = {"mr": "mister", "mrs": "missus", "dr": "doctor"}


def cardinal(n: int) -> str:
    """0 <= n < 10**12 -> English words, without "and" (123 -> one hundred twenty three)."""
    if not 0 <= n < 10**12:
        raise ValueError(f"cardinal: expected 0 <= n < 10**12, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = "" if n % 100 == 0 else " " + cardinal(n % 100)
        return f"{_ONES[n // 100]} hundred{rest}"
    for size, name in _SCALES:
        if n >= size:
            rest = "" if n % size == 0 else " " + cardinal(n % size)
            return f"{cardinal(n // size)} {name}{rest}"
    raise AssertionError(n)


def ordinal(n: int) -> str:
    """2 -> second, 21 -> twenty first, 100 -> one hundredth."""
    *head, last = cardinal(n).split()
    if last in _ORDINAL:
        last = _ORDINAL[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


def year(n: int) -> str:
    """1990 -> nineteen ninety, 1905 -> nineteen oh five, 1900 -> nineteen hundred."""
    high, low = divmod(n, 100)
    if low == 0:
        return f"{cardinal(high)} hundred"
    return f"{cardinal(high)} {'oh ' if low < 10 else ''}{cardinal(low)}"


def _number(match: re.Match) -> str:
    currency, digits, decimals, suffix = match.group(1, 2, 3, 4)
    integer = int(digits.replace(",", ""))
    suffix = (suffix or "").lower()
    if suffix in ("st", "nd", "rd", "th") and decimals is None:
        return f" {ordinal(integer)} "
    is_year = not currency and "," not in digits and decimals is None and len(digits) == 4
    if is_year and (1100 <= integer <= 1999 or 2010 <= integer <= 2099):
        words = year(integer)
    elif integer >= 10**12:  # read digit by digit rather than fail on a serial number
        words = " ".join(_ONES[int(d)] for d in digits if d.isdigit())
    else:
        words = cardinal(integer)
    if decimals is not None:
        words += " point " + " ".join(_ONES[int(d)] for d in decimals)
    if currency:
        words += " dollars" if integer != 1 or decimals else " dollar"
    if suffix == "%":
        words += " percent"
    return f" {words} "


_NUMBER = re.compile(r"(\$)?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(st|nd|rd|th|%)?", re.IGNORECASE)
_TITLE = re.compile(r"\b(mr|mrs|dr)\b\.?", re.IGNORECASE)
_NOT_WORD = re.compile(r"[^a-z0-9']+")
_STRAY_APOSTROPHE = re.compile(r"(?<![a-z0-9])'|'(?![a-z0-9])")


def normalize_english(text: str) -> str:
    """The normalisation in the module docstring; `NORMALISATION` names this version."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    text = _NUMBER.sub(_number, text)
    text = text.replace("&", " and ")
    text = _TITLE.sub(lambda m: _TITLES[m.group(1).lower()], text)
    text = _NOT_WORD.sub(" ", text.lower())
    text = _STRAY_APOSTROPHE.sub(" ", text)
    return " ".join(text.split())


@dataclass(frozen=True)
class ErrorCounts:
    """Edit operations aligning a hypothesis to a reference of `length` words (or characters)."""

    substitutions: int
    deletions: int
    insertions: int
    length: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        return self.errors / self.length


def _normalised_pair(reference: str, hypothesis: str, normalize: bool) -> tuple[str, str]:
    if normalize:
        reference, hypothesis = normalize_english(reference), normalize_english(hypothesis)
    if not reference.split():
        raise ValueError(
            f"empty reference transcript {reference!r} (after normalisation): WER is undefined"
        )
    return reference, " ".join(hypothesis.split())


def word_errors(reference: str, hypothesis: str, normalize: bool = True) -> ErrorCounts:
    """Word-level alignment by jiwer; `rate` is the WER. An empty hypothesis is all deletions."""
    jiwer = require("jiwer", "WER/CER")
    reference, hypothesis = _normalised_pair(reference, hypothesis, normalize)
    if not hypothesis:
        return ErrorCounts(0, len(reference.split()), 0, len(reference.split()))
    out = jiwer.process_words(reference, hypothesis)
    length = out.hits + out.substitutions + out.deletions
    return ErrorCounts(out.substitutions, out.deletions, out.insertions, length)


def char_errors(reference: str, hypothesis: str, normalize: bool = True) -> ErrorCounts:
    """Character-level alignment by jiwer over the normalised strings (spaces count)."""
    jiwer = require("jiwer", "WER/CER")
    reference, hypothesis = _normalised_pair(reference, hypothesis, normalize)
    if not hypothesis:
        return ErrorCounts(0, len(reference), 0, len(reference))
    out = jiwer.process_characters(reference, hypothesis)
    length = out.hits + out.substitutions + out.deletions
    return ErrorCounts(out.substitutions, out.deletions, out.insertions, length)


def corpus_rate(counts: list[ErrorCounts]) -> float:
    """Total errors over total reference length: the corpus WER/CER papers report."""
    return sum(c.errors for c in counts) / sum(c.length for c in counts)
