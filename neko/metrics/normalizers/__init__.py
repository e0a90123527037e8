"""Named, pinned text normalizers applied to references and hypotheses before WER/CER.

Numbers are comparable only under the same normalizer, so every report names the one it used
(``Normalizer.name`` and ``Normalizer.description``).

- ``whisper`` (default): Whisper's ``EnglishTextNormalizer`` as transformers ships it (the rules the
  Open ASR Leaderboard used in 2024), with Whisper's British->American spelling map ``english.json``
  read from the pinned ``whisper_normalizer`` package (installed with neko; never fetched at run time).
  Neither is copied into this repository: both are dependencies.
- ``basic``: lower-case, punctuation and symbols out, spaces collapsed (any language).
- ``none``: whitespace collapsed only (``" a  b "`` and ``"a b"`` must not differ in word count).
  Nothing else changes, Unicode form included: "café" written NFC (one code point) and NFD ("e" +
  a combining accent) are different words under ``none``; ``basic`` and ``whisper`` compare them
  equal. Normalize the files to one form first (``unicodedata.normalize("NFC", text)``) if they mix.

Each normalizer memoizes its results (LRU, 2**18 strings): N-best lists and references repeat the
same strings many times, and transformers' Whisper rules cost ~125 us per short sentence in Python
(64 regex passes and a per-character loop; bench/NOTES.md, "normalizer from the dependency"), about
half that as neko runs them (:mod:`neko.metrics.normalizers.precompiled`). Whisper's rules start
by lower-casing, so its memo is keyed by the lower-cased text: "The cat" and "the cat" cost one
call. ``precompute`` normalizes a whole file's distinct strings once, on every core.
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import json
from collections.abc import Callable, Iterable

from neko.metrics._parallel import parallel_map
from neko.metrics.normalizers.basic import BasicNormalizer
from neko.metrics.normalizers.precompiled import english_text_normalizer_class

__all__ = [
    "Normalizer",
    "NORMALIZERS",
    "DEFAULT_NORMALIZER",
    "get_normalizer",
    "precompute",
    "whisper_spelling_map",
]

DEFAULT_NORMALIZER = "whisper"
_CACHE_SIZE = 2**18
# Whisper's english.json (1,739 British -> American spellings), as the pinned package ships it.
_SPELLING_MAP_PACKAGE, _SPELLING_MAP_FILE = "whisper_normalizer", "normalizers/english.json"


class Normalizer:
    """A named ``str -> str`` with a memo. Call it like a function.

    ``key``: a cheaper ``str -> str`` whose result determines the output (``fn(key(t)) == fn(t)``
    for every ``t``), so texts with one key share one memo entry; ``None``: the text itself.
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[str], str],
        description: str,
        *,
        key: Callable[[str], str] | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self._fn = fn
        self._key = key
        memo = functools.lru_cache(maxsize=_CACHE_SIZE)(fn)
        self._memo = memo
        self._cached: Callable[[str], str] = memo if key is None else (lambda text: memo(key(text)))

    def __call__(self, text: str) -> str:
        if not isinstance(text, str):
            raise TypeError(f"normalizer {self.name!r} expects a string, got {type(text).__name__}")
        return self._cached(text)

    def words(self, text: str) -> list[str]:
        """``self(text).split()``; a precomputed normalizer hands out one shared list per text (read only)."""
        return self(text).split()

    def clear_cache(self) -> None:
        """Forget memoized results (benchmarks use this to time cold normalization)."""
        self._memo.cache_clear()

    def __repr__(self) -> str:
        return f"Normalizer({self.name!r})"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "description": self.description}


class _Precomputed(Normalizer):
    """A normalizer's outputs for a known set of texts, in a dict; other texts fall through to it."""

    def __init__(self, base: Normalizer, table: dict[str, str]) -> None:
        super().__init__(base.name, base._fn, base.description, key=base._key)
        self._table = table
        self._words: dict[str, list[str]] = {}

    def __call__(self, text: str) -> str:
        out = self._table.get(text)
        return super().__call__(text) if out is None else out

    def words(self, text: str) -> list[str]:
        out = self._words.get(text)
        if out is None:
            out = self._words[text] = self(text).split()
        return out


@functools.cache
def whisper_spelling_map() -> dict[str, str]:
    """Whisper's British -> American spelling map, read from the installed ``whisper_normalizer``."""
    path = importlib.resources.files(_SPELLING_MAP_PACKAGE).joinpath(_SPELLING_MAP_FILE)
    return json.loads(path.read_text(encoding="utf-8"))


def _whisper() -> Normalizer:
    return Normalizer(
        "whisper",
        english_text_normalizer_class()(whisper_spelling_map()),
        "Whisper EnglishTextNormalizer (openai/whisper 2022 rules as shipped in transformers and used by "
        "the Open ASR Leaderboard 2024; British->American spelling map english.json from whisper_normalizer 0.1.15)",
        key=str.lower,  # its first step; str.lower is idempotent on every code point
    )


def _basic() -> Normalizer:
    return Normalizer("basic", BasicNormalizer(), "basic: NFKC, lower-case, punctuation/symbols removed")


def _none() -> Normalizer:
    return Normalizer(
        "none",
        lambda s: " ".join(s.split()),
        "none: text as written (whitespace collapsed; Unicode NFC and NFD forms differ)",
    )


NORMALIZERS: dict[str, Callable[[], Normalizer]] = {"whisper": _whisper, "basic": _basic, "none": _none}


@functools.cache
def _build(name: str) -> Normalizer:
    return NORMALIZERS[name]()


def get_normalizer(name: str | Normalizer | Callable[[str], str] | None = DEFAULT_NORMALIZER) -> Normalizer:
    """The normalizer called ``name`` ("whisper", "basic", "none"); ``None`` means "none".

    A :class:`Normalizer` is returned as is; any other callable is wrapped as a custom normalizer
    (reports then name it ``custom:<function name>``).
    """
    if name is None:
        name = "none"
    if isinstance(name, Normalizer):
        return name
    if callable(name):
        label = getattr(name, "__name__", type(name).__name__)
        return Normalizer(f"custom:{label}", name, f"custom normalizer {label}")
    if not isinstance(name, str):
        raise TypeError(f"normalizer must be a name or a callable, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in NORMALIZERS:
        close = difflib.get_close_matches(key, NORMALIZERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown normalizer {name!r}.{hint} Choose one of: {', '.join(NORMALIZERS)}.")
    return _build(key)


def precompute(
    normalizer: str | Normalizer | Callable[[str], str] | None,
    texts: Iterable[str | None],
    *,
    workers: int | None = None,
) -> Normalizer:
    """The same normalizer (same name and outputs) with ``texts`` normalized once, up front.

    For scoring many systems and N-best lists over one set: every distinct string (every distinct
    memo key) is normalized exactly once, bypassing the LRU memo, which a 100k x 5-best set would
    overflow and thrash, on all cores when there are many (``workers``: default all cores, at most
    8). Strings not in ``texts`` fall through to the normalizer itself. ``words`` of the result hands
    out one shared token list per text.
    """
    norm = get_normalizer(normalizer)
    distinct = list(dict.fromkeys(t for t in texts if t is not None))
    key = norm._key
    keys = distinct if key is None else [key(t) for t in distinct]
    unique = list(dict.fromkeys(keys))
    done = dict(zip(unique, parallel_map(norm._fn, unique, workers), strict=True))
    return _Precomputed(norm, {t: done[k] for t, k in zip(distinct, keys, strict=True)})
