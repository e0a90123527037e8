"""Normalizers: table-driven rules (they pin the Whisper rules whatever transformers version is
installed), the pinned spelling map, and our memo/precompute layer equal to the plain class."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from neko.metrics.normalizers import get_normalizer, whisper_spelling_map

WHISPER_CASES = [
    # contractions
    ("I can't go", "i can not go"),
    ("We won't stop", "we will not stop"),
    ("they're here and it's fine", "they are here and it is fine"),
    ("she'd been there, he's got it", "she had been there he has got it"),
    ("I'm gonna do it, y'all", "i am going to do it you all"),
    ("Don't you know?", "do not you know"),
    # numbers to digits
    ("twenty one", "21"),
    ("one oh one", "101"),
    ("two thousand and twenty four", "2024"),
    ("ten thousand dollars", "$10000"),
    ("the nineteen sixties", "the 1960s"),
    ("twenty five percent", "25%"),
    ("three point five", "3.5"),
    ("double seven", "77"),
    ("minus forty two", "-42"),
    ("the thirty second floor", "the 32nd floor"),
    ("one", "one"),
    ("1,000,000 people", "1000000 people"),
    ("two and a half", "2.5"),
    # British -> American spelling (the shipped map)
    ("The colour of the theatre", "the color of the theater"),
    ("we organised a programme", "we organized a program"),
    # brackets, parentheses and fillers dropped
    ("[NOISE] hello <unk> world", "hello world"),
    ("so (laughs) anyway", "so anyway"),
    ("uh I um think hmm yes", "i think yes"),
    # titles, symbols, diacritics
    ("Mr. Smith met Dr. Jones", "mister smith met doctor jones"),
    ("café naïve Æsop", "cafe naive aesop"),
    ("Hello,   World!!", "hello world"),
    ("", ""),
]


@pytest.mark.parametrize("text,expected", WHISPER_CASES)
def test_whisper_rules(text: str, expected: str) -> None:
    assert get_normalizer("whisper")(text).strip() == expected


BASIC_CASES = [
    ("Hello, World!", "hello world"),
    ("Don't STOP", "dont stop"),
    ("it’s 5 o’clock", "its 5 oclock"),
    ("  many   spaces\there ", "many spaces here"),
    ("twenty one $5", "twenty one 5"),  # nothing expanded, symbols out
    ("café — naïve", "café naïve"),  # diacritics kept
    ("नमस्ते दुनिया", "नमस्ते दुनिया"),  # marks (vowel signs) kept
]


@pytest.mark.parametrize("text,expected", BASIC_CASES)
def test_basic_rules(text: str, expected: str) -> None:
    assert get_normalizer("basic")(text) == expected


def test_none_only_collapses_whitespace() -> None:
    assert get_normalizer("none")("  Hello,  World! ") == "Hello, World!"
    assert get_normalizer(None).name == "none"


def test_unknown_name_suggests() -> None:
    with pytest.raises(ValueError, match="Did you mean 'whisper'"):
        get_normalizer("whsiper")
    with pytest.raises(ValueError, match="Choose one of"):
        get_normalizer("klingon")


def test_custom_callable_and_passthrough() -> None:
    n = get_normalizer(str.upper)
    assert n("ab") == "AB" and n.name == "custom:upper"
    w = get_normalizer("whisper")
    assert get_normalizer(w) is w and get_normalizer("WHISPER") is w
    with pytest.raises(TypeError):
        w(3)  # type: ignore[arg-type]


# sha256 of json.dumps(map, sort_keys=True): Whisper's english.json as whisper_normalizer 0.1.15 ships it.
SPELLING_MAP_SHA256 = "a9514fed7a5a462d97b9a7a2f93d38e7ec098ad2dd4171096b9d9e7b2a8ccdec"


def test_spelling_map_is_whispers() -> None:
    mapping = whisper_spelling_map()
    assert len(mapping) == 1739
    assert mapping["colour"] == "color" and mapping["theatre"] == "theater"
    digest = hashlib.sha256(json.dumps(mapping, sort_keys=True).encode()).hexdigest()
    assert digest == SPELLING_MAP_SHA256, "the installed whisper_normalizer ships a different english.json"


def _sentences() -> list[str]:
    out = [t for t, _ in WHISPER_CASES] + [
        "He paid £20 and 50 cents for 3 1/2 pounds",
        "It's 5.5%, not five per cent.",
        "The 3rd of May, 1999... at 10:30 a.m.",
        "Call 555-0199 or e-mail j.doe@example.com #42",
        "Two hundred and fifty thousand, six hundred and one",
        "He's been to St. Louis; she'll go too.",
        "a half million, one and a half million, triple five",
        "Ms. Ngũgĩ's résumé (draft) [inaudible] costs $0.50",
        "We'd done it, they'd gone, you'd better",
        "first second third fourth fifth twelfth twentieth hundredth",
        "zero o oh nought",
    ]
    fortunes = Path("/usr/share/games/fortunes")
    if fortunes.is_dir():  # more real text where the Debian package is installed
        for f in sorted(fortunes.glob("*")):
            if f.is_file() and not f.suffix:
                out += [
                    ln for ln in f.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()
                ]
                if len(out) > 4000:
                    break
    return out


def test_equals_transformers_whisper_normalizer() -> None:
    """The memoized and the precomputed "whisper" normalizer give exactly what transformers'
    EnglishTextNormalizer gives with Whisper's map, on real sentences (twice: cold and memoized)."""
    from neko.metrics.normalizers import precompute

    hf = EnglishTextNormalizer(whisper_spelling_map())
    ours = get_normalizer("whisper")
    ours.clear_cache()
    sentences = _sentences()
    expected = [hf(s) for s in sentences]
    assert [ours(s) for s in sentences] == expected
    assert [ours(s) for s in sentences] == expected
    pre = precompute("whisper", sentences, workers=1)
    assert [pre(s) for s in sentences] == expected


def test_precompute_equals_normalizer_in_parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    from neko.metrics import _parallel
    from neko.metrics.normalizers import precompute

    monkeypatch.setattr(_parallel, "MIN_PARALLEL_ITEMS", 10)  # force forked workers on a small input
    texts = [t for t, _ in WHISPER_CASES] * 3
    pre = precompute("whisper", texts, workers=2)
    w = get_normalizer("whisper")
    assert pre.name == "whisper" and pre.description == w.description
    assert [pre(t) for t in texts] == [w(t) for t in texts]
    assert pre("not in the table, Colour") == "not in the table color"
    assert _parallel.parallel_map(len, texts, workers=2) == [len(t) for t in texts]


def test_unicode_forms_differ_only_under_none():
    """What the ``none`` normalizer's description promises: NFC and NFD spellings are two words."""
    import unicodedata

    nfc = "un café noir"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    assert get_normalizer("none")(nfc) != get_normalizer("none")(nfd)
    assert "NFD" in get_normalizer("none").description
    for name in ("basic", "whisper"):
        assert get_normalizer(name)(nfc) == get_normalizer(name)(nfd)


def test_precompiled_normalizer_runs_transformers_own_code() -> None:
    """neko's "whisper" normalizer is transformers' class from transformers' file, not a copy."""
    import inspect

    from neko.metrics.normalizers.precompiled import english_text_normalizer_class

    ours = english_text_normalizer_class()
    assert ours.__name__ == "EnglishTextNormalizer"
    assert inspect.getsourcefile(ours) == inspect.getsourcefile(EnglishTextNormalizer)
    assert inspect.getsource(ours) == inspect.getsource(EnglishTextNormalizer)


PATTERN_TEXTS = [
    "",
    "i won't go",
    "won'tx",
    "xwon't",
    "she'd been there",
    "she'd  been",
    "mr smith and mrs smith st louis",
    "(a) [b] <c> 1,000 $0.50 £2 and ¢7 3rd 1s",
    "hmm uh um mm ok 's 're n't",
    "ÉCOLE naïve ﬁ ① Ⅻ ß",
]


def test_precompiled_re_matches_re_on_every_pattern_the_normalizer_uses() -> None:
    """Every pattern the normalizer calls, on texts with and without its phrase: same as ``re``."""
    import re
    import sys

    from neko.metrics.normalizers.precompiled import PrecompiledRe

    fast = PrecompiledRe()
    get_normalizer("whisper")  # loads the private module
    module = sys.modules.get("_neko_precompiled_english_normalizer")
    assert module is not None and isinstance(module.re, PrecompiledRe)
    for text in _sentences()[:200]:
        module.EnglishTextNormalizer(whisper_spelling_map())(text)  # fills its pattern tables
    patterns = list(module.re._sub)
    assert len(patterns) >= 60
    for pattern in patterns:
        for text in PATTERN_TEXTS:
            assert fast.sub(pattern, "<X>", text) == re.sub(pattern, "<X>", text), pattern
            assert fast.split(pattern, text) == re.split(pattern, text), pattern
            m1, m2 = fast.match(pattern, text), re.match(pattern, text)
            assert (m1 and m1.group(0)) == (m2 and m2.group(0)), pattern
    assert fast.sub("a", "b", "aaa", count=1) == "baa"  # counts and flags go to re itself
    assert fast.sub("A", "b", "aaa", flags=re.IGNORECASE) == "bbb"


def test_character_memo_equals_the_function_it_memoizes() -> None:
    """Per-character memo of Whisper's symbol/diacritic removal, on text from many scripts."""
    import random

    from transformers.models.whisper.english_normalizer import remove_symbols_and_diacritics

    from neko.metrics.normalizers.precompiled import CharacterMemo

    memo = CharacterMemo(remove_symbols_and_diacritics)
    rng = random.Random(0)
    ranges = [
        (0x20, 0x250),
        (0x300, 0x370),
        (0x370, 0x530),
        (0x1E00, 0x2200),
        (0x3000, 0x3100),
        (0xAC00, 0xAC40),
        (0xFB00, 0xFB50),
        (0xFF00, 0xFFF0),
        (0x1D400, 0x1D440),
    ]
    for _ in range(300):
        text = "".join(chr(rng.randrange(*rng.choice(ranges))) for _ in range(rng.randint(0, 30)))
        for keep in ("", ".%$¢€£"):
            assert memo(text, keep=keep) == remove_symbols_and_diacritics(text, keep=keep)


def test_whisper_memo_is_keyed_by_lower_case() -> None:
    """Whisper's rules lower-case first, so "The Colour" and "the colour" share one memo entry."""
    hf = EnglishTextNormalizer(whisper_spelling_map())
    w = get_normalizer("whisper")
    w.clear_cache()
    assert w("The COLOUR, twenty one") == hf("The COLOUR, twenty one")
    assert w("the colour, TWENTY ONE") == hf("the colour, TWENTY ONE")
    assert w._memo.cache_info().misses == 1 and w._memo.cache_info().hits == 1


def test_precomputed_words_are_the_split_text() -> None:
    from neko.metrics.normalizers import precompute

    texts = ["The Colour", "the colour", "Twenty one dollars", None]
    pre = precompute("whisper", texts, workers=1)
    for t in ["The Colour", "Twenty one dollars", "not in the table, theatre"]:
        assert pre.words(t) == get_normalizer("whisper")(t).split()
    assert pre.words("The Colour") is pre.words("The Colour")  # one shared list per text


def _fails_on_seven(x: int) -> int:
    if x == 7:
        raise RuntimeError("seven")
    return x


def test_parallel_map_order_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The calling process and forked workers share the chunks; order kept; a worker's error raises."""
    from neko.metrics import _parallel

    monkeypatch.setattr(_parallel, "MIN_PARALLEL_ITEMS", 10)
    items = list(range(1000))
    assert _parallel.parallel_map(str, items, workers=3) == [str(i) for i in items]
    with pytest.raises(RuntimeError, match="seven"):
        _parallel.parallel_map(_fails_on_seven, items, workers=2)
    assert _parallel.parallel_map(str, items[:5], workers=2) == ["0", "1", "2", "3", "4"]
