"""Non-neural baselines every corrector must beat: the 1-best and a ROVER-style N-best vote.

- ``one_best``: hypothesis index 0, as the recognizer ranked it (never the last one: the NeKo
  author's public script used the last hypothesis as "before correction" and inflated the gains).
  HyPoradise's ``<UNK>`` placeholder stands for an empty hypothesis and scores as "".
- ``rover``: align every other hypothesis to a pivot (the 1-best) with a word-level Levenshtein
  alignment, then vote slot by slot. Each pivot word is a slot whose candidates are the aligned
  words or a deletion; each gap between pivot words is an insertion slot whose candidates are the
  inserted word sequences or nothing. The plurality wins; ties go to the pivot (its word, or no
  insertion), so the vote changes the 1-best only where a majority disagrees with it.
  Votes compare a case- and edge-punctuation-folded key; the surface form kept is the first
  one met in N-best order. Duplicate hypotheses are removed first (HyPoradise padded short lists
  with random duplicates, which would otherwise stuff the ballot). This is a star alignment, not
  ROVER's incremental word transition network: simpler, deterministic, and exact for one pivot.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from rapidfuzz.distance import Levenshtein

from neko.data.schema import UNK, Example, clean_nbest

__all__ = ["one_best", "rover", "rover_vote", "BASELINES"]

_EDGE_PUNCT = "\"'.,;:!?()[]{}«»“”‘’"


def _key(token: str) -> str:
    return token.strip(_EDGE_PUNCT).casefold() or token


def _hyps(example: Example | Sequence[str] | str) -> list[str]:
    if isinstance(example, Example):
        return example.hypotheses
    if isinstance(example, str):
        return [example]
    return list(example)


def one_best(example: Example | Sequence[str] | str) -> str:
    """The uncorrected baseline: hypothesis index 0 (``<UNK>``/blank -> "")."""
    hyps = _hyps(example)
    if not hyps:
        raise ValueError("empty N-best list: no 1-best to return")
    h = " ".join(hyps[0].split())
    return "" if h == UNK else h


def _align(pivot: list[str], hyp: list[str]) -> tuple[list[str | None], list[tuple[str, ...]]]:
    """Per pivot slot the aligned word (None = deleted), per gap (len(pivot)+1) the inserted words."""
    slots: list[str | None] = [None] * len(pivot)
    gaps: list[list[str]] = [[] for _ in range(len(pivot) + 1)]
    pk = [_key(t) for t in pivot]
    hk = [_key(t) for t in hyp]
    for tag, i1, i2, j1, j2 in Levenshtein.opcodes(pk, hk).as_list():
        if tag in ("equal", "replace"):
            m = min(i2 - i1, j2 - j1)
            for k in range(m):
                slots[i1 + k] = hyp[j1 + k]
            if j2 - j1 > m:  # unequal replace block: leftover hypothesis words are insertions
                gaps[i1 + m].extend(hyp[j1 + m : j2])
        elif tag == "insert":
            gaps[i1].extend(hyp[j1:j2])
        # "delete": slots stay None
    return slots, [tuple(g) for g in gaps]


def _vote(candidates: list, pivot_choice):
    """Plurality by folded key; the pivot's choice wins ties, then the earliest in N-best order."""
    counts = Counter(_fold(c) for c in candidates)
    best = max(counts.values())
    if counts[_fold(pivot_choice)] == best:
        return pivot_choice
    return next(c for c in candidates if counts[_fold(c)] == best)


def _fold(c):
    if c is None:
        return None
    if isinstance(c, tuple):
        return tuple(_key(t) for t in c)
    return _key(c)


def rover_vote(hypotheses: Sequence[str]) -> str:
    """Majority vote over an N-best list (best first) aligned to its first hypothesis."""
    hyps = clean_nbest(hypotheses, dedup=True, drop_unk=True)
    if not hyps:
        return ""
    if len(hyps) < 3:  # with fewer than 3 voters the pivot wins every tie: nothing can change
        return hyps[0]
    pivot = hyps[0].split()
    others = [h.split() for h in hyps[1:]]
    aligned = [_align(pivot, o) for o in others]
    out: list[str] = []
    for gap in range(len(pivot) + 1):
        ins = _vote([(), *(a[1][gap] for a in aligned)], ())
        if ins:
            out.extend(ins)
        if gap < len(pivot):
            word = _vote([pivot[gap], *(a[0][gap] for a in aligned)], pivot[gap])
            if word is not None:
                out.append(word)
    return " ".join(out)


def rover(example: Example | Sequence[str] | str) -> str:
    """ROVER-style vote over the example's N-best list (a single text is returned as is)."""
    return rover_vote(_hyps(example))


# name -> function of an Example; what `neko eval --systems` can add as columns.
BASELINES = {"1best": one_best, "rover": rover}
