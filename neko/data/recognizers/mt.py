"""Translation: Apertium round trips (English -> pivot -> English) as an N-best English list.

Design choices:
- Apertium is rule-based and deterministic, so one system gives one hypothesis. Five pivot languages
  give five independent English hypotheses of the same sentence, with the original as reference:
  a monolingual MT-correction task whose errors are real transfer errors (wrong sense, agreement,
  word order), recorded as ``meta.kind = "round-trip"``.
- The list keeps the pivot order (index ``i`` came from ``pivots[i]``), duplicates included: when two
  pivots agree that is signal, and the neko N-best policy keeps released duplicates.
- Always ``-u``: without it unknown words carry ``*`` marks. Apertium's other debug marks (``#``
  for a missing generated form, ``@`` for an untranslated lemma) are stripped as well: they are
  annotations, not text a translation system would show a reader.
- Batches go through one process per direction, one sentence per line (Apertium keeps line breaks),
  because process start-up (~0.1 s) costs 300x a sentence's translation.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

from neko.data.recognizers.base import Recognizer, RecognizerError, run_tool

__all__ = ["PIVOTS", "ApertiumRoundTrip", "apertium_translate"]

# pivot -> (forward pair, backward pair), as installed by scripts/setup.sh.
PIVOTS: dict[str, tuple[str, str]] = {
    "spa": ("eng-spa", "spa-eng"),
    "cat": ("eng-cat", "cat-eng"),
    "glg": ("en-gl", "gl-en"),
    "epo": ("en-eo", "eo-en"),
    "hbs": ("eng-hbs", "hbs-eng"),
}
_MARK = re.compile(r"(?<!\S)[#@*~](?=\w)")


def _clean(line: str) -> str:
    return " ".join(_MARK.sub("", line).split())


def apertium_translate(texts: list[str], pair: str, timeout: float = 300.0) -> list[str]:
    """Translate each text (one per line) with Apertium ``pair`` (e.g. ``eng-spa``), ``-u`` always."""
    for t in texts:
        if "\n" in t:
            raise ValueError("apertium_translate: texts must be single lines (found a newline)")
    data = "".join(t + "\n" for t in texts).encode("utf-8")
    out = run_tool(["apertium", "-u", pair], input=data, timeout=timeout).decode("utf-8", "replace")
    lines = out.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != len(texts):
        raise RecognizerError(f"apertium {pair}: {len(texts)} lines in, {len(lines)} out")
    return [_clean(x) for x in lines]


class ApertiumRoundTrip(Recognizer):
    """English text -> one English hypothesis per pivot language (``recognize`` takes a str)."""

    name = "apertium"

    def __init__(self, pivots: tuple[str, ...] = tuple(PIVOTS)):
        unknown = [p for p in pivots if p not in PIVOTS]
        if unknown:
            raise ValueError(f"unknown pivot(s) {unknown}; known: {', '.join(PIVOTS)}")
        self.pivots = tuple(pivots)
        self.nbest = len(self.pivots)

    @property
    def version(self) -> str:
        try:
            out = subprocess.run(
                ["dpkg-query", "-W", "-f", "${Version}", "apertium"], capture_output=True, text=True
            ).stdout
        except OSError:
            out = ""
        return f"apertium {out.strip() or 'unknown'} (pivots {', '.join(self.pivots)})"

    def recognize(self, item: Any) -> list[str]:
        result = self.recognize_batch([item])[0]
        if isinstance(result, RecognizerError):
            raise result
        return result

    def recognize_batch(self, items: list[Any]) -> list[list[str] | RecognizerError]:
        texts = [" ".join(str(t).split()) for t in items]
        per_pivot: list[list[str]] = []
        for p in self.pivots:
            fwd, back = PIVOTS[p]
            per_pivot.append(apertium_translate(apertium_translate(texts, fwd), back))
        out: list[list[str] | RecognizerError] = []
        for i, t in enumerate(texts):
            hyps = [col[i] for col in per_pivot]
            if not t or not any(hyps):
                out.append(RecognizerError("apertium returned no translation" if t else "empty input text"))
            else:
                out.append(hyps)
        return out
