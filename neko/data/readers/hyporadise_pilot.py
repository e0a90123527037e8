"""HyPoradise-pilot / GenSEC Task 1: ``{"hypothesis": [N-best], "transcription": reference, "source", "id", ...}``.

Released as Parquet (read batch by batch, like the PleIAs release), also accepted as JSON/JSONL.
The release adds columns derived from the N-best list (``input1`` = the 1-best, ``hypothesis_concatenated``
and ``prompt`` = the list as prompt text); they are dropped, since neko builds its own prompt from
``hypothesis``. ``source`` (the corpus the row came from) and any other scalar column go to ``meta``.
Task ``asr`` unless ``--task`` says otherwise.
"""

from __future__ import annotations

from typing import Any

from neko.data.readers.base import Reader, RowContext, as_object, optional_text, str_list_field

_MAIN = {"hypothesis", "transcription", "id"}
DERIVED = {"input1", "hypothesis_concatenated", "prompt"}


def _sniff(rec: dict[str, Any]) -> bool:
    return "hypothesis" in rec and "transcription" in rec


def _convert(rec: Any, ctx: RowContext) -> dict[str, Any]:
    rec = as_object(rec, ctx)
    row: dict[str, Any] = {
        "task": "asr",
        "input": str_list_field(rec, "hypothesis", ctx),
        "output": optional_text(rec, "transcription", ctx),
    }
    if rec.get("id") is not None:
        row["id"] = rec["id"]
    meta = {
        k: v
        for k, v in rec.items()
        if k not in _MAIN and k not in DERIVED and isinstance(v, (str, int, float, bool))
    }
    if meta:
        row["meta"] = meta
    return row


READER = Reader(
    name="hyporadise-pilot",
    description="HyPoradise-pilot / GenSEC Task 1 {hypothesis: [N-best], transcription, source, id} as Parquet or JSON",
    containers=("json", "parquet"),
    sniff=_sniff,
    convert=_convert,
    extensions=(".parquet", ".json", ".jsonl"),
)
