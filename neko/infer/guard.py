"""No-harm guard: reject a generated correction that looks implausible.

Generative correction can make clean inputs worse (the paper's own SPGISpeech result went
3.09 -> 3.27 WER). The guard is a cheap, explainable filter on features of each correction:

- ``edit_to_nearest``: word edit distance to the nearest hypothesis, divided by the longer length.
  A correction far from every hypothesis is usually a hallucination, not a fix.
- ``length_ratio``: words in the correction / words in the 1-best (truncation, run-on repetition).
- ``mean_logprob``: mean token log-probability of the correction (model confidence).
- ``margin``: how much higher the model scores the correction than what would be returned instead
  (the rescored hypothesis, or the input); an edit has to be worth something to the model.

A rejected correction is replaced by the fallback of the task's policy (:mod:`neko.infer.policy`,
which also tunes these thresholds on dev and saves them with the rest of the policy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from neko.schema import clean_nbest

__all__ = ["GuardConfig", "GuardFeatures", "guard_features", "word_edit_distance", "INF"]

INF = math.inf


@dataclass(frozen=True)
class GuardConfig:
    # Reject when the correction is farther than this from every hypothesis (0 = identical, 1 = disjoint).
    max_edit: float = 0.6
    # Reject when words(correction) / words(1-best) falls outside [min, max].
    min_length_ratio: float = 0.5
    max_length_ratio: float = 2.0
    # Reject when the mean token log-prob is below this; -inf disables (its scale is model-specific).
    min_mean_logprob: float = -INF
    # Reject unless the model scores the correction at least this much above the choice it would
    # otherwise return (the rescored hypothesis, or the input); -inf disables. See neko.infer.policy.
    min_margin: float = -INF

    def reasons(self, f: GuardFeatures) -> list[str]:
        """Why this correction is rejected (empty list = accepted)."""
        out = []
        if f.empty:
            out.append("empty correction")
        if f.edit_to_nearest > self.max_edit:
            out.append(f"edit distance {f.edit_to_nearest:.2f} to nearest hypothesis > {self.max_edit:g}")
        if not (self.min_length_ratio <= f.length_ratio <= self.max_length_ratio):
            out.append(
                f"length ratio {f.length_ratio:.2f} outside [{self.min_length_ratio:g}, {self.max_length_ratio:g}]"
            )
        if f.mean_logprob is not None and f.mean_logprob < self.min_mean_logprob:
            out.append(f"mean log-prob {f.mean_logprob:.2f} < {self.min_mean_logprob:g}")
        if f.margin is not None and f.margin < self.min_margin:
            out.append(f"score margin {f.margin:.2f} over the fallback < {self.min_margin:g}")
        return out

    def to_dict(self) -> dict[str, Any]:
        # JSON has no infinity: write None for "disabled" bounds.
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GuardConfig:
        defaults = {
            "max_edit": INF,
            "min_length_ratio": 0.0,
            "max_length_ratio": INF,
            "min_mean_logprob": -INF,
            "min_margin": -INF,
        }
        unknown = set(d) - set(defaults)
        if unknown:
            raise ValueError(f"unknown guard threshold(s) {sorted(unknown)}; known: {sorted(defaults)}")
        return cls(**{k: float(defaults[k] if d.get(k) is None else d[k]) for k in defaults if k in d})


@dataclass(frozen=True)
class GuardFeatures:
    edit_to_nearest: float
    length_ratio: float
    mean_logprob: float | None
    empty: bool
    margin: float | None = None


def word_edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance over words (substitution = insertion = deletion = 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, wa in enumerate(a, 1):
        cur = [i]
        for j, wb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (wa != wb)))
        prev = cur
    return prev[-1]


def guard_features(
    hypotheses: Sequence[str], correction: str, mean_logprob: float | None, margin: float | None = None
) -> GuardFeatures:
    hyps = clean_nbest(hypotheses, dedup=True) or [""]
    c = correction.split()
    dists = []
    for h in hyps:
        w = h.split()
        dists.append(word_edit_distance(c, w) / max(len(c), len(w), 1))
    ratio = len(c) / max(len(hyps[0].split()), 1)
    return GuardFeatures(min(dists), ratio, mean_logprob, empty=not c, margin=margin)
