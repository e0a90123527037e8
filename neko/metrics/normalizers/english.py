"""Whisper's English text normalizer, pinned to the version the Open ASR Leaderboard used in 2024.

Origin and licence: the rules below are OpenAI Whisper's ``whisper/normalizers/english.py`` (MIT
licence, Copyright (c) 2022 OpenAI) in the form vendored by Hugging Face transformers
(``models/whisper/english_normalizer.py``) and by the Open ASR Leaderboard (2024). The
British->American spelling map ``english.json`` beside this file is Whisper's own data file (MIT),
copied byte for byte from the ``whisper_normalizer`` 0.1.15 package (MIT, Kurian Benoy), which
ships it unchanged; it is never fetched at run time.

Why a copy and not an import: numbers are only comparable under one exact normalizer version.
Whisper itself later changed the rules ("half a million" -> "0.5 million", currency symbols glued
to numbers), the leaderboard later added ellipsis/acronym rules, and ``whisper_normalizer`` adds
"kinda/sorta/dunno/cause". Pinning the rules here keeps every neko report reproducible;
``tests/metrics/test_metrics_normalizers.py`` checks we equal transformers' copy on real sentences.

Speed (the rules are unchanged, only their evaluation): regexes are compiled once, each
contraction/title rule is skipped when its literal text is absent (exact: every such rule is a
literal between ``\\b`` anchors), and the per-character symbol removal is a cached
``str.translate`` table instead of a Python loop over ``unicodedata`` calls.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

__all__ = ["EnglishNumberNormalizer", "EnglishSpellingNormalizer", "EnglishTextNormalizer", "SymbolTable"]

SPELLING_MAP_PATH = Path(__file__).with_name("english.json")

# Non-ASCII letters that NFKD does not decompose (Whisper's list).
ADDITIONAL_DIACRITICS = {
    "œ": "oe",
    "Œ": "OE",
    "ø": "o",
    "Ø": "O",
    "æ": "ae",
    "Æ": "AE",
    "ß": "ss",
    "ẞ": "SS",
    "đ": "d",
    "Đ": "D",
    "ð": "d",
    "Ð": "D",
    "þ": "th",
    "Þ": "th",
    "ł": "l",
    "Ł": "L",
}


class SymbolTable(dict):
    """A lazily filled ``str.translate`` table: symbols/punctuation (and optionally marks) -> space.

    ``drop_diacritics``: Whisper's ``remove_symbols_and_diacritics`` (category Mn dropped, the
    manual letters above mapped, other M/S/P -> space). Otherwise Whisper's ``remove_symbols``
    (M/S/P -> space), or with ``keep_marks`` only S/P -> space (safe for scripts whose vowels are marks).
    """

    def __init__(self, keep: str = "", *, drop_diacritics: bool = True, keep_marks: bool = False) -> None:
        super().__init__()
        self.keep = set(keep)
        self.drop_diacritics = drop_diacritics
        self.categories = "SP" if keep_marks else "MSP"

    def __missing__(self, code: int) -> str | int:
        c = chr(code)
        out: str | int
        if c in self.keep:
            out = code
        elif self.drop_diacritics and c in ADDITIONAL_DIACRITICS:
            out = ADDITIONAL_DIACRITICS[c]
        elif self.drop_diacritics and unicodedata.category(c) == "Mn":
            out = ""
        elif unicodedata.category(c)[0] in self.categories:
            out = " "
        else:
            out = code
        self[code] = out
        return out


_DIGITS = re.compile(r"^\d+(\.\d+)?$")
_ANY_DIGIT = re.compile(r"\d")


class EnglishNumberNormalizer:
    """Spelled-out numbers -> Arabic numerals ("twenty one" -> "21", "one oh one" -> "101",
    "ten thousand dollars" -> "$10000", ordinals and plurals keep their suffix: "1960s", "32nd")."""

    def __init__(self) -> None:
        self.zeros = {"o", "oh", "zero"}
        # fmt: off
        names = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                 "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
        # fmt: on
        self.ones = {name: i for i, name in enumerate(names, start=1)}
        self.ones_plural = {
            "sixes" if name == "six" else name + "s": (value, "s") for name, value in self.ones.items()
        }
        self.ones_ordinal = {
            "zeroth": (0, "th"),
            "first": (1, "st"),
            "second": (2, "nd"),
            "third": (3, "rd"),
            "fifth": (5, "th"),
            "twelfth": (12, "th"),
            **{
                name + ("h" if name.endswith("t") else "th"): (value, "th")
                for name, value in self.ones.items()
                if value > 3 and value != 5 and value != 12
            },
        }
        self.ones_suffixed = {**self.ones_plural, **self.ones_ordinal}
        self.tens = {
            "twenty": 20,
            "thirty": 30,
            "forty": 40,
            "fifty": 50,
            "sixty": 60,
            "seventy": 70,
            "eighty": 80,
            "ninety": 90,
        }
        self.tens_plural = {name.replace("y", "ies"): (value, "s") for name, value in self.tens.items()}
        self.tens_ordinal = {name.replace("y", "ieth"): (value, "th") for name, value in self.tens.items()}
        self.tens_suffixed = {**self.tens_plural, **self.tens_ordinal}
        mult_names = ["hundred", "thousand", "million", "billion", "trillion", "quadrillion", "quintillion"]
        mult_names += ["sextillion", "septillion", "octillion", "nonillion", "decillion"]
        self.multipliers = {"hundred": 100, **{n: 1000 ** (i) for i, n in enumerate(mult_names[1:], start=1)}}
        self.multipliers_plural = {name + "s": (value, "s") for name, value in self.multipliers.items()}
        self.multipliers_ordinal = {name + "th": (value, "th") for name, value in self.multipliers.items()}
        self.multipliers_suffixed = {**self.multipliers_plural, **self.multipliers_ordinal}
        self.decimals = {*self.ones, *self.tens, *self.zeros}
        self.preceding_prefixers = {"minus": "-", "negative": "-", "plus": "+", "positive": "+"}
        self.following_prefixers = {
            "pound": "£",
            "pounds": "£",
            "euro": "€",
            "euros": "€",
            "dollar": "$",
            "dollars": "$",
            "cent": "¢",
            "cents": "¢",
        }
        self.prefixes = set(self.preceding_prefixers.values()) | set(self.following_prefixers.values())
        self.suffixers: dict[str, str | dict[str, str]] = {"per": {"cent": "%"}, "percent": "%"}
        self.specials = {"and", "double", "triple", "point"}
        self.words = {
            key
            for mapping in [
                self.zeros,
                self.ones,
                self.ones_suffixed,
                self.tens,
                self.tens_suffixed,
                self.multipliers,
                self.multipliers_suffixed,
                self.preceding_prefixers,
                self.following_prefixers,
                self.suffixers,
                self.specials,
            ]
            for key in mapping
        }
        self._and_a_half = re.compile(r"\band\s+a\s+half\b")
        self._letter_digit = re.compile(r"([a-z])([0-9])")
        self._digit_letter = re.compile(r"([0-9])([a-z])")
        self._suffix = re.compile(r"([0-9])\s+(st|nd|rd|th|s)\b")
        self._cents = re.compile(r"([€£$])([0-9]+) (?:and )?¢([0-9]{1,2})\b")
        self._only_cents = re.compile(r"[€£$]0.([0-9]{1,2})\b")
        self._one = re.compile(r"\b1(s?)\b")

    def process_words(self, words: list[str]) -> Iterator[str]:  # noqa: C901 (Whisper's state machine, kept as is)
        prefix: str | None = None
        value: str | int | None = None
        skip = False

        def to_fraction(s: str) -> Fraction | None:
            try:
                return Fraction(s)
            except ValueError:
                return None

        def output(result: str | int) -> str:
            nonlocal prefix, value
            result = str(result)
            if prefix is not None:
                result = prefix + result
            value = None
            prefix = None
            return result

        n = len(words)
        for i, current in enumerate(words):
            prev = words[i - 1] if i > 0 else None
            next = words[i + 1] if i < n - 1 else None
            if skip:
                skip = False
                continue
            next_is_numeric = next is not None and _DIGITS.match(next)
            has_prefix = current[0] in self.prefixes
            current_without_prefix = current[1:] if has_prefix else current
            if _DIGITS.match(current_without_prefix):
                # Arabic numbers (potentially with signs and fractions)
                f = to_fraction(current_without_prefix)
                if f is None:
                    raise ValueError(f"cannot read {current_without_prefix!r} as a number")
                if value is not None:
                    if isinstance(value, str) and value.endswith("."):
                        # concatenate decimals / ip address components
                        value = str(value) + str(current)
                        continue
                    yield output(value)
                prefix = current[0] if has_prefix else prefix
                value = f.numerator if f.denominator == 1 else current_without_prefix
            elif current not in self.words:
                if value is not None:
                    yield output(value)
                yield output(current)
            elif current in self.zeros:
                value = str(value or "") + "0"
            elif current in self.ones:
                ones = self.ones[current]
                if value is None:
                    value = ones
                elif isinstance(value, str) or prev in self.ones:
                    if prev in self.tens and ones < 10:  # replace the last zero with the digit
                        value = str(value)[:-1] + str(ones)
                    else:
                        value = str(value) + str(ones)
                elif ones < 10:
                    value = value + ones if value % 10 == 0 else str(value) + str(ones)
                else:  # eleven to nineteen
                    value = value + ones if value % 100 == 0 else str(value) + str(ones)
            elif current in self.ones_suffixed:
                # ordinal or cardinal; yield the number right away
                ones, suffix = self.ones_suffixed[current]
                if value is None:
                    yield output(str(ones) + suffix)
                elif isinstance(value, str) or prev in self.ones:
                    if prev in self.tens and ones < 10:
                        yield output(str(value)[:-1] + str(ones) + suffix)
                    else:
                        yield output(str(value) + str(ones) + suffix)
                elif ones < 10:
                    if value % 10 == 0:
                        yield output(str(value + ones) + suffix)
                    else:
                        yield output(str(value) + str(ones) + suffix)
                else:
                    if value % 100 == 0:
                        yield output(str(value + ones) + suffix)
                    else:
                        yield output(str(value) + str(ones) + suffix)
                value = None
            elif current in self.tens:
                tens = self.tens[current]
                if value is None:
                    value = tens
                elif isinstance(value, str):
                    value = str(value) + str(tens)
                else:
                    value = value + tens if value % 100 == 0 else str(value) + str(tens)
            elif current in self.tens_suffixed:
                tens, suffix = self.tens_suffixed[current]
                if value is None:
                    yield output(str(tens) + suffix)
                elif isinstance(value, str):
                    yield output(str(value) + str(tens) + suffix)
                elif value % 100 == 0:
                    yield output(str(value + tens) + suffix)
                else:
                    yield output(str(value) + str(tens) + suffix)
            elif current in self.multipliers:
                multiplier = self.multipliers[current]
                if value is None:
                    value = multiplier
                elif isinstance(value, str) or value == 0:
                    f = to_fraction(str(value))
                    p = f * multiplier if f is not None else None
                    if f is not None and p is not None and p.denominator == 1:
                        value = p.numerator
                    else:
                        yield output(value)
                        value = multiplier
                else:
                    before = value // 1000 * 1000
                    residual = value % 1000
                    value = before + residual * multiplier
            elif current in self.multipliers_suffixed:
                multiplier, suffix = self.multipliers_suffixed[current]
                if value is None:
                    yield output(str(multiplier) + suffix)
                elif isinstance(value, str):
                    f = to_fraction(value)
                    p = f * multiplier if f is not None else None
                    if f is not None and p is not None and p.denominator == 1:
                        yield output(str(p.numerator) + suffix)
                    else:
                        yield output(value)
                        yield output(str(multiplier) + suffix)
                else:
                    before = value // 1000 * 1000
                    residual = value % 1000
                    value = before + residual * multiplier
                    yield output(str(value) + suffix)
                value = None
            elif current in self.preceding_prefixers:
                # apply prefix (positive, minus, etc.) if it precedes a number
                if value is not None:
                    yield output(value)
                if next in self.words or next_is_numeric:
                    prefix = self.preceding_prefixers[current]
                else:
                    yield output(current)
            elif current in self.following_prefixers:
                # apply prefix (dollars, cents, etc.) only after a number
                if value is not None:
                    prefix = self.following_prefixers[current]
                    yield output(value)
                else:
                    yield output(current)
            elif current in self.suffixers:
                # apply suffix symbols (percent -> '%')
                if value is not None:
                    suffix_rule = self.suffixers[current]
                    if isinstance(suffix_rule, dict):
                        if next in suffix_rule:
                            yield output(str(value) + suffix_rule[next])
                            skip = True
                        else:
                            yield output(value)
                            yield output(current)
                    else:
                        yield output(str(value) + suffix_rule)
                else:
                    yield output(current)
            elif current in self.specials:
                if next not in self.words and not next_is_numeric:
                    # special handling only if the next word can be numeric
                    if value is not None:
                        yield output(value)
                    yield output(current)
                elif current == "and":
                    # ignore "and" after hundreds, thousands, etc.
                    if prev not in self.multipliers:
                        if value is not None:
                            yield output(value)
                        yield output(current)
                elif current in ("double", "triple"):
                    if next in self.ones or next in self.zeros:
                        repeats = 2 if current == "double" else 3
                        ones = self.ones.get(next, 0)
                        value = str(value or "") + str(ones) * repeats
                        skip = True
                    else:
                        if value is not None:
                            yield output(value)
                        yield output(current)
                elif current == "point":
                    if next in self.decimals or next_is_numeric:
                        value = str(value or "") + "."
        if value is not None:
            yield output(value)

    def preprocess(self, s: str) -> str:
        # "<number> and a half" -> "<number> point five"
        if "half" in s:
            results = []
            segments = self._and_a_half.split(s)
            for i, segment in enumerate(segments):
                if len(segment.strip()) == 0:
                    continue
                results.append(segment)
                if i != len(segments) - 1:
                    last_word = segment.rsplit(maxsplit=2)[-1]
                    if last_word in self.decimals or last_word in self.multipliers:
                        results.append("point five")
                    else:
                        results.append("and a half")
            s = " ".join(results)
        # space at number/letter boundaries, except suffixes (1960s, 32nd)
        s = self._letter_digit.sub(r"\1 \2", s)
        s = self._digit_letter.sub(r"\1 \2", s)
        return self._suffix.sub(r"\1\2", s)

    def postprocess(self, s: str) -> str:
        def combine_cents(m: re.Match) -> str:
            try:
                return f"{m.group(1)}{m.group(2)}.{int(m.group(3)):02d}"
            except ValueError:
                return m.string

        def extract_cents(m: re.Match) -> str:
            try:
                return f"¢{int(m.group(1))}"
            except ValueError:
                return m.string

        # "$2 and ¢7" -> "$2.07"
        s = self._cents.sub(combine_cents, s)
        s = self._only_cents.sub(extract_cents, s)
        # "one(s)" instead of "1(s)", for readability (Whisper's choice)
        return self._one.sub(r"one\1", s)

    def __call__(self, s: str) -> str:
        words = s.split()
        # Exact fast path (most sentences): with no digit, no number word and no "half", every rule
        # below leaves the words as they are.
        if "half" not in s and self.words.isdisjoint(words) and not _ANY_DIGIT.search(s):
            return " ".join(words)
        s = self.preprocess(s)
        s = " ".join(word for word in self.process_words(s.split()) if word is not None)
        return self.postprocess(s)


class EnglishSpellingNormalizer:
    """British -> American spelling, word by word, from Whisper's ``english.json`` (1,739 entries)."""

    def __init__(self, mapping: dict[str, str] | None = None) -> None:
        if mapping is None:
            mapping = json.loads(SPELLING_MAP_PATH.read_text(encoding="utf-8"))
        self.mapping = mapping

    def __call__(self, s: str) -> str:
        m = self.mapping
        return " ".join(m.get(word, word) for word in s.split())


# Whisper's rules, in Whisper's order (order matters: "won't" must fire before "n't").
_REPLACERS = {
    # common contractions
    r"\bwon't\b": "will not",
    r"\bcan't\b": "can not",
    r"\blet's\b": "let us",
    r"\bain't\b": "aint",
    r"\by'all\b": "you all",
    r"\bwanna\b": "want to",
    r"\bgotta\b": "got to",
    r"\bgonna\b": "going to",
    r"\bi'ma\b": "i am going to",
    r"\bimma\b": "i am going to",
    r"\bwoulda\b": "would have",
    r"\bcoulda\b": "could have",
    r"\bshoulda\b": "should have",
    r"\bma'am\b": "madam",
    # contractions in titles/prefixes
    r"\bmr\b": "mister ",
    r"\bmrs\b": "missus ",
    r"\bst\b": "saint ",
    r"\bdr\b": "doctor ",
    r"\bprof\b": "professor ",
    r"\bcapt\b": "captain ",
    r"\bgov\b": "governor ",
    r"\bald\b": "alderman ",
    r"\bgen\b": "general ",
    r"\bsen\b": "senator ",
    r"\brep\b": "representative ",
    r"\bpres\b": "president ",
    r"\brev\b": "reverend ",
    r"\bhon\b": "honorable ",
    r"\basst\b": "assistant ",
    r"\bassoc\b": "associate ",
    r"\blt\b": "lieutenant ",
    r"\bcol\b": "colonel ",
    r"\bjr\b": "junior ",
    r"\bsr\b": "senior ",
    r"\besq\b": "esquire ",
    # perfect tenses (Whisper: "ideally any past participle, but that is harder")
    r"'d been\b": " had been",
    r"'s been\b": " has been",
    r"'d gone\b": " had gone",
    r"'s gone\b": " has gone",
    r"'d done\b": " had done",  # "'s done" is ambiguous
    r"'s got\b": " has got",
    # general contractions
    r"n't\b": " not",
    r"'re\b": " are",
    r"'s\b": " is",
    r"'d\b": " would",
    r"'ll\b": " will",
    r"'t\b": " not",
    r"'ve\b": " have",
    r"'m\b": " am",
}


class EnglishTextNormalizer:
    """Whisper's English normalizer: lower-case; drop [bracketed]/<angled>/(parenthesised) text and
    the fillers hmm/mm/mhm/mmm/uh/um; expand contractions and titles; remove symbols and diacritics;
    spoken numbers -> digits; British -> American spelling; collapse whitespace."""

    def __init__(self, spelling_mapping: dict[str, str] | None = None) -> None:
        self.standardize_numbers = EnglishNumberNormalizer()
        self.standardize_spellings = EnglishSpellingNormalizer(spelling_mapping)
        # (literal that must be present, compiled rule, replacement): the literal test is exact
        # because each rule matches only that literal text.
        self._replacers = [(p.replace(r"\b", ""), re.compile(p), r) for p, r in _REPLACERS.items()]
        # Without an apostrophe in the text only these can fire (no replacement adds an apostrophe).
        self._plain_replacers = [r for r in self._replacers if "'" not in r[0]]
        self._brackets = re.compile(r"[<\[][^>\]]*[>\]]")
        self._parens = re.compile(r"\(([^)]+?)\)")
        self._fillers = re.compile(r"\b(hmm|mm|mhm|mmm|uh|um)\b")
        self._space_apostrophe = re.compile(r"\s+'")
        self._digit_commas = re.compile(r"(\d),(\d)")
        self._periods = re.compile(r"\.([^0-9]|$)")
        self._symbols = SymbolTable(".%$¢€£", drop_diacritics=True)
        self._currency = re.compile(r"[.$¢€£]([^0-9])")
        self._percent = re.compile(r"([^0-9])%")
        self._spaces = re.compile(r"\s+")

    def __call__(self, s: str) -> str:
        # Each `if` below tests a character the rule needs in order to match: skipping is exact, and
        # it avoids Python-level template expansion in re.sub for the common case of no match.
        s = s.lower()
        if "<" in s or "[" in s:
            s = self._brackets.sub("", s)
        if "(" in s:
            s = self._parens.sub("", s)
        s = self._fillers.sub("", s)
        if "'" in s:
            s = self._space_apostrophe.sub("'", s)
            for literal, pattern, replacement in self._replacers:
                if literal in s:
                    s = pattern.sub(replacement, s)
        else:
            for literal, pattern, replacement in self._plain_replacers:
                if literal in s:
                    s = pattern.sub(replacement, s)
        if "," in s:
            s = self._digit_commas.sub(r"\1\2", s)
        if "." in s:
            s = self._periods.sub(r" \1", s)
        s = unicodedata.normalize("NFKD", s).translate(self._symbols)
        s = self.standardize_numbers(s)
        s = self.standardize_spellings(s)
        # prefix/suffix symbols that are not next to a number
        if "." in s or "$" in s or "¢" in s or "€" in s or "£" in s:
            s = self._currency.sub(r" \1", s)
        if "%" in s:
            s = self._percent.sub(r"\1 ", s)
        return self._spaces.sub(" ", s)
