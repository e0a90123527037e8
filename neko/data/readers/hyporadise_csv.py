"""HyPoradise CSV variant: columns ``source,target,best_hypo``.

``source`` is the N-best list joined with ``". "``, so we split it on ``". "`` (lossy for a hypothesis
that itself contains ". ": HyPoradise hypotheses are lower-case and unpunctuated, so this is rare).
``best_hypo`` is the 1-best: when it differs from the first split item it is put at index 0 and its
first occurrence further down is removed, so index 0 is always the recognizer's best. Optional ``id``
column. Task ``asr`` unless ``--task`` says otherwise.
"""

from __future__ import annotations

from typing import Any

from neko.data.readers.base import Reader, RowContext, text_field

SEP = ". "


def _sniff(rec: dict[str, Any]) -> bool:
    return {"source", "target"} <= set(rec) and "text" not in rec


def split_source(source: str, best: str | None) -> list[str]:
    hyps = source.split(SEP)
    if best is not None and best.strip() and hyps[0].strip() != best.strip():
        rest = list(hyps)
        stripped = [h.strip() for h in rest]
        if best.strip() in stripped:
            rest.pop(stripped.index(best.strip()))
        hyps = [best, *rest]
    return hyps


def _convert(rec: Any, ctx: RowContext) -> dict[str, Any]:
    source = text_field(rec, "source", ctx)
    best = rec.get("best_hypo")
    row: dict[str, Any] = {"task": "asr", "input": split_source(source, best), "output": rec.get("target")}
    if rec.get("id"):
        row["id"] = rec["id"]
    return row


READER = Reader(
    name="hyporadise-csv",
    description='HyPoradise CSV with columns source (N-best joined by ". "), target, best_hypo',
    containers=("csv",),
    sniff=_sniff,
    convert=_convert,
    extensions=(".csv",),
)
