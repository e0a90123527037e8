"""Unicode symbol/punctuation removal as a cached ``str.translate`` table (Whisper's rules).

Whisper's ``remove_symbols_and_diacritics`` and ``remove_symbols`` loop over characters in Python
with a ``unicodedata`` call each; a translate table filled lazily per code point gives the same
output at C speed once the (few hundred) distinct characters of a corpus have been seen.
Origin: OpenAI Whisper ``whisper/normalizers/basic.py`` (MIT licence, Copyright (c) 2022 OpenAI).
"""

from __future__ import annotations

import unicodedata

__all__ = ["ADDITIONAL_DIACRITICS", "SymbolTable"]

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
