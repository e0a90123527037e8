"""Whisper's spoken-number normalizer: "twenty one" -> "21", "one oh one" -> "101", "$10000".

Origin: OpenAI Whisper ``whisper/normalizers/english.py`` (MIT licence, Copyright (c) 2022 OpenAI),
2022 rules as vendored by transformers and the Open ASR Leaderboard (2024); see ``english.py``.
The state machine is unchanged; only an exact fast path for text without numbers was added.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from fractions import Fraction

__all__ = ["EnglishNumberNormalizer"]

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
