"""HyPoradise pilot JSON: ``{"hypothesis": [N-best], "transcription": reference, "source": ..., "id": ...}``.

``source`` (the corpus or recording the row came from) and any other scalar fields go to ``meta``.
Task ``asr`` unless ``--task`` says otherwise.
"""

from __future__ import annotations

from typing import Any

from neko.data.readers.base import Reader, RowContext, as_object, optional_text, str_list_field

_MAIN = {"hypothesis", "transcription", "id"}


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
    meta = {k: v for k, v in rec.items() if k not in _MAIN and isinstance(v, (str, int, float, bool))}
    if meta:
        row["meta"] = meta
    return row


READER = Reader(
    name="hyporadise-pilot",
    description="HyPoradise pilot JSON {hypothesis: [N-best], transcription, source, id}",
    containers=("json",),
    sniff=_sniff,
    convert=_convert,
)
