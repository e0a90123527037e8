"""The language-agnostic "basic" normalizer: lower-case, punctuation/symbols out, spaces collapsed.

Design choices:
- Unicode categories S* and P* become spaces after NFKC, so the rule works for any script; marks
  (M*) are kept, because in Brahmic scripts vowels are marks (Whisper's ``BasicTextNormalizer``
  deletes them, which inflates WER on Hindi; see its own docstring).
- An apostrophe between two letters is deleted, not spaced ("don't" -> "dont"), so a contraction
  stays one word instead of becoming two that both count in the WER denominator.
- Nothing is expanded or respelled: this is the normalizer to use for non-English text or when
  the reference convention must be kept (numbers stay as written).
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["BasicNormalizer"]


class _SymbolsToSpace(dict):
    """A ``str.translate`` table filled lazily: symbols and punctuation (categories S*, P*) -> space.

    One ``unicodedata`` call per distinct code point, then C-speed translation: a corpus has only a
    few hundred distinct characters.
    """

    def __missing__(self, code: int) -> str | int:
        out = " " if unicodedata.category(chr(code))[0] in "SP" else code
        self[code] = out
        return out


class BasicNormalizer:
    """``str -> str``: NFKC, lower-case, in-word apostrophes dropped, other S/P characters -> space."""

    def __init__(self) -> None:
        self._apostrophe = re.compile(r"(?<=\w)['\u2019\u02bc](?=\w)")
        self._symbols = _SymbolsToSpace()

    def __call__(self, s: str) -> str:
        s = unicodedata.normalize("NFKC", s).lower()
        s = self._apostrophe.sub("", s)
        return " ".join(s.translate(self._symbols).split())
