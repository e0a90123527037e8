"""Whisper's English text normalizer, pinned to the version the Open ASR Leaderboard used in 2024.

Origin and licence: the rules here and in ``numbers.py``/``symbols.py`` are OpenAI Whisper's ``whisper/normalizers/english.py`` (MIT
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
from pathlib import Path

from neko.metrics.normalizers.numbers import EnglishNumberNormalizer
from neko.metrics.normalizers.symbols import SymbolTable

__all__ = [
    "EnglishNumberNormalizer",
    "EnglishSpellingNormalizer",
    "EnglishTextNormalizer",
    "SPELLING_MAP_PATH",
]

SPELLING_MAP_PATH = Path(__file__).with_name("english.json")


class EnglishSpellingNormalizer:
    """British -> American spelling, word by word, from Whisper's ``english.json`` (1,739 entries)."""

    def __init__(self, mapping: dict[str, str] | None = None) -> None:
        if mapping is None:
            mapping = json.loads(SPELLING_MAP_PATH.read_text(encoding="utf-8"))
        self.mapping = mapping

    def __call__(self, s: str) -> str:
        m = self.mapping
        words = s.split()
        return " ".join(map(m.get, words, words))


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
            # (a 49-way regex alternation to pre-test all rules at once measured 7x slower than this)
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
