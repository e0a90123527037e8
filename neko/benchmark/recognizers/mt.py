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
- A pivot is a *chain* of Apertium pairs. The five trained pivots are one hop out and back. Debian
  ships no other English pair that translates both ways (Basque, Icelandic and Macedonian go into
  English only), so the held-out pivots of the zero-shot file (``UNSEEN_PIVOTS``) reach a language no
  training row used (Portuguese, Italian, French, Occitan) through Spanish or Catalan and come back
  the same way: four hops, whose extra transfer errors the model never saw in training.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

from neko.benchmark.recognizers.base import (
    MissingToolError,
    Recognizer,
    RecognizerError,
    require_tool,
    run_tool,
)

__all__ = ["PIVOTS", "UNSEEN_PIVOTS", "PAIR_PACKAGES", "ApertiumRoundTrip", "apertium_translate"]

# pivot -> the chain of Apertium pairs English -> ... -> English, as installed by scripts/setup.sh.
PIVOTS: dict[str, tuple[str, ...]] = {
    "spa": ("eng-spa", "spa-eng"),
    "cat": ("eng-cat", "cat-eng"),
    "glg": ("en-gl", "gl-en"),
    "epo": ("en-eo", "eo-en"),
    "hbs": ("eng-hbs", "hbs-eng"),
}
# Held out of training: the zero-shot MT rows (the paper's Table 4 analog) use only these.
UNSEEN_PIVOTS: dict[str, tuple[str, ...]] = {
    "por-via-spa": ("eng-spa", "es-pt", "pt-es", "spa-eng"),
    "ita-via-spa": ("eng-spa", "spa-ita", "ita-spa", "spa-eng"),
    "fra-via-spa": ("eng-spa", "es-fr", "fr-es", "spa-eng"),
    "oci-via-cat": ("eng-cat", "ca-oc", "oc-ca", "cat-eng"),
    "ita-via-cat": ("eng-cat", "cat-ita", "ita-cat", "cat-eng"),
}
_ALL_PIVOTS = {**PIVOTS, **UNSEEN_PIVOTS}
# Debian package of each pair (for the install hint when one is missing).
PAIR_PACKAGES: dict[str, str] = {
    "eng-spa": "apertium-eng-spa",
    "spa-eng": "apertium-eng-spa",
    "eng-cat": "apertium-eng-cat",
    "cat-eng": "apertium-eng-cat",
    "en-gl": "apertium-en-gl",
    "gl-en": "apertium-en-gl",
    "en-eo": "apertium-eo-en",
    "eo-en": "apertium-eo-en",
    "eng-hbs": "apertium-hbs-eng",
    "hbs-eng": "apertium-hbs-eng",
    "es-pt": "apertium-es-pt",
    "pt-es": "apertium-es-pt",
    "spa-ita": "apertium-spa-ita",
    "ita-spa": "apertium-spa-ita",
    "es-fr": "apertium-fr-es",
    "fr-es": "apertium-fr-es",
    "ca-oc": "apertium-oc-ca",
    "oc-ca": "apertium-oc-ca",
    "cat-ita": "apertium-cat-ita",
    "ita-cat": "apertium-cat-ita",
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
        unknown = [p for p in pivots if p not in _ALL_PIVOTS]
        if unknown:
            raise ValueError(f"unknown pivot(s) {unknown}; known: {', '.join(_ALL_PIVOTS)}")
        self.pivots = tuple(pivots)
        self.nbest = len(self.pivots)

    def check_pairs(self) -> None:
        """Raise :class:`MissingToolError` naming the packages when a pair of a pivot is not installed
        (Apertium would otherwise fail every row of the build the same way)."""
        require_tool("apertium")
        listed = run_tool(["apertium", "-l"]).decode("utf-8", "replace").split()
        missing = sorted({p for piv in self.pivots for p in _ALL_PIVOTS[piv] if p not in listed})
        if missing:
            pkgs = " ".join(sorted({PAIR_PACKAGES.get(p, f"apertium-{p}") for p in missing}))
            raise MissingToolError(
                f"Apertium pair(s) {', '.join(missing)} not installed; install them with "
                f"`sudo apt-get install {pkgs}` (or run `bash scripts/setup.sh`)"
            )

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
            out = texts
            for pair in _ALL_PIVOTS[p]:
                out = apertium_translate(out, pair)
            per_pivot.append(out)
        out: list[list[str] | RecognizerError] = []
        for i, t in enumerate(texts):
            hyps = [col[i] for col in per_pivot]
            if not t or not any(hyps):
                out.append(RecognizerError("apertium returned no translation" if t else "empty input text"))
            else:
                out.append(hyps)
        return out
