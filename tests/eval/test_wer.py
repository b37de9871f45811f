import jiwer
import pytest

from nclm.eval.wer import (
    cardinal,
    char_errors,
    corpus_rate,
    normalize_english,
    ordinal,
    word_errors,
)

# (reference, hypothesis), already normalised, so that jiwer scores the same strings
PAIRS = [
    ("the cat sat on the mat", "the cat sat on mat"),
    ("the cat sat on the mat", "a cat sat on the hat today"),
    ("one two three", "one two three"),
    ("hello world", "yellow word"),
    ("it's a well", "its a well"),
]


@pytest.mark.parametrize("ref, hyp", PAIRS)
def test_rates_equal_jiwer(ref, hyp):
    assert word_errors(ref, hyp).rate == pytest.approx(jiwer.wer(ref, hyp), abs=1e-12)
    assert char_errors(ref, hyp).rate == pytest.approx(jiwer.cer(ref, hyp), abs=1e-12)


def test_corpus_rate_equals_jiwer_over_the_list():
    refs, hyps = zip(*PAIRS)
    counts = [word_errors(r, h) for r, h in PAIRS]
    assert corpus_rate(counts) == pytest.approx(jiwer.wer(list(refs), list(hyps)), abs=1e-12)


def test_hand_counted_errors():
    # one deleted word of six; a substitution, an insertion: counted by hand
    e = word_errors("The cat sat on the mat.", "the cat sat on mat")
    assert (e.substitutions, e.deletions, e.insertions, e.length) == (0, 1, 0, 6)
    e = word_errors("hello world", "yellow world again")
    assert (e.substitutions, e.deletions, e.insertions, e.rate) == (1, 0, 1, 1.0)
    # words stay words: Amphion stripped the spaces, which made any error a WER of 1
    assert word_errors("a b c d", "a b c x").rate == 0.25
    assert char_errors("ab c", "ab").rate == 0.5  # "ab c" -> "ab": ' ' and 'c' deleted


def test_empty_hypothesis_is_all_deletions_and_empty_reference_is_an_error():
    assert word_errors("the cat sat", "").rate == 1.0
    assert char_errors("ab", "  ").rate == 1.0
    with pytest.raises(ValueError, match="empty reference transcript"):
        word_errors("?!", "anything")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello, World!", "hello world"),
        ("THE  Quick-brown\tfox...", "the quick brown fox"),
        (
            "Dr. Smith paid $5 on the 2nd of May, 1990!",
            "doctor smith paid five dollars on the second of may nineteen ninety",
        ),  # fmt: skip
        ("It\u2019s Mr Brown's", "it's mister brown's"),
        ("'Tis the dogs' bone", "tis the dogs bone"),
        ("café naïve", "cafe naive"),
        ("1,000,000 and 3.14", "one million and three point one four"),
        ("21 1st 12th 40th 103rd", "twenty one first twelfth fortieth one hundred third"),
        (
            "in 1905, 1900, 2000, 2024",
            "in nineteen oh five nineteen hundred two thousand twenty twenty four",
        ),  # fmt: skip
        ("50% & $1", "fifty percent and one dollar"),
        ("Mrs. Jones", "missus jones"),
    ],
)
def test_normalisation_cases(text, expected):
    assert normalize_english(text) == expected


def test_numbers_in_words():
    assert cardinal(0) == "zero"
    assert cardinal(115) == "one hundred fifteen"
    assert cardinal(7_000_042) == "seven million forty two"
    assert ordinal(3) == "third" and ordinal(90) == "ninetieth"


def test_normalised_transcripts_match_spoken_forms():
    # a recognizer writes words where the script had digits and punctuation
    spoken = "chapter twelve the year nineteen eighty four"
    assert word_errors("Chapter 12: the year 1984.", spoken).rate == 0
    assert word_errors("Chapter 12: the year 1984.", spoken, normalize=False).rate > 0
