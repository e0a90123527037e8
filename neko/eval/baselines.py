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

from collections.abc import Sequence

from rapidfuzz.distance import Levenshtein

from neko.schema import Example, clean_nbest, is_unk

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
    return "" if is_unk(h) else h


def _align(pivot_keys: list[str], hyp: list[str], hyp_keys: list[str]):
    """Align one hypothesis to the pivot.

    Returns (per pivot slot: (key, word) or None for a deletion; {gap: inserted words} for the
    non-empty gaps, gap g sitting before pivot word g, gap len(pivot) after the last one).
    """
    slots: list[tuple[str, str] | None] = [None] * len(pivot_keys)
    gaps: dict[int, list[str]] = {}
    for tag, i1, i2, j1, j2 in Levenshtein.opcodes(pivot_keys, hyp_keys).as_list():
        if tag == "equal" or tag == "replace":
            m = min(i2 - i1, j2 - j1)
            for k in range(m):
                slots[i1 + k] = (hyp_keys[j1 + k], hyp[j1 + k])
            if j2 - j1 > m:  # unequal replace block: leftover hypothesis words are insertions
                gaps.setdefault(i1 + m, []).extend(hyp[j1 + m : j2])
        elif tag == "insert":
            gaps.setdefault(i1, []).extend(hyp[j1:j2])
        # "delete": the slot stays None
    return slots, gaps


def _plurality(keys: list, pivot_key):
    """The winning key: plurality, ties to the pivot's key, then to the earliest in N-best order."""
    counts: dict = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    best = max(counts.values())
    if counts.get(pivot_key, 0) == best:
        return pivot_key
    return next(k for k in keys if counts[k] == best)


def rover_vote(hypotheses: Sequence[str]) -> str:
    """Majority vote over an N-best list (best first) aligned to its first hypothesis."""
    hyps = clean_nbest(hypotheses, dedup=True, drop_unk=True)
    if not hyps:
        return ""
    if len(hyps) < 3:  # with fewer than 3 voters the pivot wins every tie: nothing can change
        return hyps[0]
    pivot = hyps[0].split()
    pkeys = [_key(t) for t in pivot]
    aligned = []
    for h in hyps[1:]:
        toks = h.split()
        aligned.append(_align(pkeys, toks, [_key(t) for t in toks]))
    out: list[str] = []
    for gap in range(len(pivot) + 1):
        inserted = [a[1].get(gap) for a in aligned]
        if any(inserted):
            # candidates: the pivot's "nothing" plus each hypothesis's inserted sequence (or nothing)
            keys = [()] + [tuple(_key(t) for t in w) if w else () for w in inserted]
            win = _plurality(keys, ())
            if win:
                out.extend(next(w for w, k in zip(inserted, keys[1:], strict=True) if k == win))
        if gap < len(pivot):
            pk = pkeys[gap]
            slot = [a[0][gap] for a in aligned]
            if all(c is not None and c[0] == pk for c in slot):
                out.append(pivot[gap])  # unanimous: the common case, no counting
                continue
            keys = [pk] + [c[0] if c is not None else None for c in slot]
            win = _plurality(keys, pk)
            if win == pk:
                out.append(pivot[gap])
            elif win is not None:
                out.append(next(c[1] for c in slot if c is not None and c[0] == win))
    return " ".join(out)


def rover(example: Example | Sequence[str] | str) -> str:
    """ROVER-style vote over the example's N-best list (a single text is returned as is)."""
    return rover_vote(_hyps(example))


# name -> function of an Example; what `neko eval --systems` can add as columns.
BASELINES = {"1best": one_best, "rover": rover}
