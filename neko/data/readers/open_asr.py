"""Open-ASR N-best JSONL: ``{"reference", "reference_normalized", "hypotheses": [{"hypothesis_index",
"hypothesis", "hypothesis_normalized"}, ...]}``.

Hypotheses are sorted by ``hypothesis_index`` (0 = best), so a file written out of order still has
its 1-best at index 0; a repeated index is an error (the rank would be ambiguous). We keep the raw
``hypothesis`` / ``reference`` text and put the normalized reference in ``meta``: scoring applies its
own named normalizer (``neko eval``), and mixing two normalizers would make WERs incomparable.
Optional ``id`` (else ``<file stem>-<line>``). Task ``asr`` unless ``--task`` says otherwise.
"""

from __future__ import annotations

from typing import Any

from neko.data.readers.base import Reader, RowContext, as_object, optional_text


def _sniff(rec: dict[str, Any]) -> bool:
    hyps = rec.get("hypotheses")
    return isinstance(hyps, list) and "reference" in rec


def _convert(rec: Any, ctx: RowContext) -> dict[str, Any]:
    rec = as_object(rec, ctx)
    hyps = rec.get("hypotheses")
    if hyps is None:
        raise ctx.error("missing", "hypotheses", "missing-field")
    if not isinstance(hyps, list):
        raise ctx.error(f"expected a list of objects, got {type(hyps).__name__}", "hypotheses", "wrong-type")
    if not hyps:
        raise ctx.error("empty N-best list", "hypotheses", "empty-nbest")
    ranked: list[tuple[int, str]] = []
    for i, h in enumerate(hyps):
        where = f"hypotheses[{i}]"
        if not isinstance(h, dict):
            raise ctx.error(f"expected an object, got {type(h).__name__}", where, "wrong-type")
        idx = h.get("hypothesis_index", i)
        if not isinstance(idx, int) or isinstance(idx, bool):
            raise ctx.error(
                f"expected an integer, got {type(idx).__name__}", f"{where}.hypothesis_index", "wrong-type"
            )
        text = h.get("hypothesis")
        if not isinstance(text, str):
            raise ctx.error(
                f"expected a string, got {type(text).__name__}", f"{where}.hypothesis", "wrong-type"
            )
        ranked.append((idx, text))
    indices = [i for i, _ in ranked]
    if len(set(indices)) != len(indices):
        raise ctx.error(f"repeated hypothesis_index in {sorted(indices)}", "hypotheses", "invalid-row")
    ranked.sort(key=lambda t: t[0])
    row: dict[str, Any] = {
        "task": "asr",
        "input": [t for _, t in ranked],
        "output": optional_text(rec, "reference", ctx),
    }
    if rec.get("id") is not None:
        row["id"] = rec["id"]
    norm = optional_text(rec, "reference_normalized", ctx)
    if norm is not None:
        row["meta"] = {"reference_normalized": norm}
    return row


READER = Reader(
    name="open-asr",
    description="Open-ASR N-best JSONL {reference, reference_normalized, hypotheses: [{hypothesis_index, hypothesis}]}",
    containers=("json",),
    sniff=_sniff,
    convert=_convert,
)
