"""transformers' Whisper ``EnglishTextNormalizer``, its code unchanged, run with precompiled regexes.

The class calls ``re.sub(pattern, ...)`` 64 times per text (and ``re.match``/``re.split``), each
call looking its pattern up in ``re``'s cache; 49 of the 64 patterns are a plain word or phrase
(``\\bwon't\\b``, ``'d been\\b``, ``n't\\b``), and most texts contain none of them. Then it maps
every character of the text's NFKD form, one Python call per character, to itself, a space or
nothing (``remove_symbols_and_diacritics``). This module runs transformers' own file as a private
module in which

- ``re`` is :class:`PrecompiledRe`: each pattern is compiled once, and a substitution whose pattern
  is a plain phrase is skipped when the phrase is not in the text (such a pattern can only match
  text that contains it, so ``re.sub`` would return the text unchanged);
- ``remove_symbols_and_diacritics`` is :class:`CharacterMemo`: the module's own function, applied
  once per distinct character and kept in a ``str.translate`` table (it maps each character of the
  NFKD text on its own, and each such character is its own NFKD form).

Outputs are transformers' (tests compare them on ~4,000 real sentences), about 2x faster per text
(bench/NOTES.md, "neko eval against one plain normalizer pass"). Loading the file on its own also
skips transformers' package ``__init__`` (lazy tables of every model: 1-3 s on 2 cores), which the
normalizer (``re``, ``unicodedata``, ``fractions``, ``regex``) does not use. Where the file cannot
be loaded on its own, the ordinary import is used.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CharacterMemo", "PrecompiledRe", "english_text_normalizer_class"]

_MODULE = "transformers.models.whisper.english_normalizer"
_PRIVATE_MODULE = "_neko_precompiled_english_normalizer"
# A pattern that is a plain phrase, optionally between word boundaries: every match contains the phrase.
_PLAIN_PHRASE = re.compile(r"(?:\\b)?([\w' ]+)(?:\\b)?")


def _substituter(pattern: str) -> Callable[[Any, str], str]:
    sub = re.compile(pattern).sub
    plain = _PLAIN_PHRASE.fullmatch(pattern)
    if plain is None:
        return sub
    phrase = plain.group(1)
    return lambda repl, text: sub(repl, text) if phrase in text else text


class PrecompiledRe:
    """The part of the ``re`` module the normalizer calls, with compiled patterns kept by pattern text.

    Same results as ``re`` for every call; anything else is ``re``'s own.
    """

    def __init__(self) -> None:
        self._sub: dict[str, Callable[[Any, str], str]] = {}
        self._match: dict[str, Callable[[str], re.Match[str] | None]] = {}
        self._split: dict[str, Callable[[str], list[str]]] = {}

    def sub(self, pattern: Any, repl: Any, string: str, count: int = 0, flags: int = 0) -> str:
        fn = self._sub.get(pattern)
        if fn is None or count or flags:
            if count or flags or not isinstance(pattern, str):
                return re.sub(pattern, repl, string, count=count, flags=flags)
            fn = self._sub[pattern] = _substituter(pattern)
        return fn(repl, string)

    def match(self, pattern: Any, string: str, flags: int = 0) -> re.Match[str] | None:
        fn = self._match.get(pattern)
        if fn is None or flags:
            if flags or not isinstance(pattern, str):
                return re.match(pattern, string, flags)
            fn = self._match[pattern] = re.compile(pattern).match
        return fn(string)

    def split(self, pattern: Any, string: str, maxsplit: int = 0, flags: int = 0) -> list[str]:
        fn = self._split.get(pattern)
        if fn is None or maxsplit or flags:
            if maxsplit or flags or not isinstance(pattern, str):
                return re.split(pattern, string, maxsplit=maxsplit, flags=flags)
            fn = self._split[pattern] = re.compile(pattern).split
        return fn(string)

    def __getattr__(self, name: str) -> Any:
        return getattr(re, name)


class CharacterMemo:
    """``fn(text, keep)`` for a ``fn`` that maps each character of ``NFKD(text)`` on its own: each
    distinct character goes through ``fn`` once, then whole texts through ``str.translate``."""

    def __init__(self, fn: Callable[..., str]) -> None:
        self._fn = fn
        self._tables: dict[str, _CharacterTable] = {}

    def __call__(self, text: str, keep: str = "") -> str:
        table = self._tables.get(keep)
        if table is None:
            table = self._tables[keep] = _CharacterTable(self._fn, keep)
        return unicodedata.normalize("NFKD", text).translate(table)


class _CharacterTable(dict):
    def __init__(self, fn: Callable[..., str], keep: str) -> None:
        super().__init__()
        self._fn, self._keep = fn, keep

    def __missing__(self, code: int) -> str:
        out = self[code] = self._fn(chr(code), keep=self._keep)
        return out


@functools.cache
def english_text_normalizer_class() -> type:
    """transformers' ``EnglishTextNormalizer``, run from its own file with :class:`PrecompiledRe` and
    :class:`CharacterMemo` (see the module docstring)."""
    try:
        package = importlib.util.find_spec("transformers")
        path = Path(package.origin).parent / "models" / "whisper" / "english_normalizer.py"
        spec = importlib.util.spec_from_file_location(_PRIVATE_MODULE, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_PRIVATE_MODULE] = module  # pickle looks classes up by module name
        spec.loader.exec_module(module)
        module.re = PrecompiledRe()
        module.remove_symbols_and_diacritics = CharacterMemo(module.remove_symbols_and_diacritics)
        return module.EnglishTextNormalizer
    except (ImportError, OSError, AttributeError, TypeError):
        sys.modules.pop(_PRIVATE_MODULE, None)
        return importlib.import_module(_MODULE).EnglishTextNormalizer
