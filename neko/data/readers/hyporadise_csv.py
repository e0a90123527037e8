"""HyPoradise CSV variant: columns ``source,target,best_hypo`` and, in some files, ``score``.

As released, ``source`` holds every hypothesis followed by ``". "`` (so it *ends* with ``". "``):
``"hyp one. hyp two. hyp three. "``. We drop that one final separator and split on ``". "``, so a
5-best row gives 5 hypotheses, not 5 and an empty sixth (splitting is lossy only for a hypothesis
that itself contains ". ": HyPoradise hypotheses are lower-case and unpunctuated, so this is rare).
``best_hypo`` is the 1-best: when it differs from the first split item it is put at index 0 and its
first occurrence further down is removed, so index 0 is always the recognizer's best.

``score`` (when present) is a Python-list string of per-hypothesis scores in ``source`` order,
``"[-3.25, -4.5, ...]"``; it is kept as a list of numbers in ``meta["score"]``, reordered with the
hypotheses when ``best_hypo`` moves to the front (a ``best_hypo`` found nowhere in ``source`` has no
score: the list then stays in ``source`` order, i.e. it scores ``input[1:]``). Optional ``id`` column. Task ``asr`` unless
``--task`` says otherwise.
"""

from __future__ import annotations

import ast
from typing import Any

from neko.data.readers.base import Reader, RowContext, text_field

SEP = ". "


def _sniff(rec: dict[str, Any]) -> bool:
    return {"source", "target"} <= set(rec) and "text" not in rec


def split_source(source: str, best: str | None) -> tuple[list[str], list[int]]:
    """(hypotheses, their positions in ``source``; -1 for a ``best_hypo`` found nowhere in it)."""
    hyps = source.removesuffix(SEP).split(SEP)
    order = list(range(len(hyps)))
    if best is not None and best.strip() and hyps[0].strip() != best.strip():
        stripped = [h.strip() for h in hyps]
        if best.strip() in stripped:
            i = stripped.index(best.strip())
            order = [i, *(j for j in order if j != i)]
            hyps = [best, *(hyps[j] for j in order[1:])]
        else:
            order = [-1, *order]
            hyps = [best, *hyps]
    return hyps, order


def parse_scores(text: str, ctx: RowContext) -> list[float]:
    """The ``score`` cell: a Python list literal of numbers."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    )
    if not ok:
        raise ctx.error(
            f"expected a list of numbers like '[-3.25, -4.5]', got {text[:40]!r}", "score", "wrong-type"
        )
    return [float(v) for v in value]


def _convert(rec: Any, ctx: RowContext) -> dict[str, Any]:
    source = text_field(rec, "source", ctx)
    hyps, order = split_source(source, rec.get("best_hypo"))
    row: dict[str, Any] = {"task": "asr", "input": hyps, "output": rec.get("target")}
    if rec.get("id"):
        row["id"] = rec["id"]
    score_text = rec.get("score")
    if isinstance(score_text, str) and score_text.strip():
        scores = parse_scores(score_text, ctx)
        if -1 not in order and len(scores) == len(order):
            scores = [scores[i] for i in order]  # each score stays with its hypothesis
        row["meta"] = {"score": scores}
    return row


READER = Reader(
    name="hyporadise-csv",
    description='HyPoradise CSV: source (N-best, each followed by ". "), target, best_hypo, score?',
    containers=("csv",),
    sniff=_sniff,
    convert=_convert,
    extensions=(".csv",),
)
