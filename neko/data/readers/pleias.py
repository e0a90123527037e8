"""PleIAs Post-OCR-Correction: ``text`` (OCR output) and ``corrected_text`` columns, task ``ocr``.

Reads JSON/JSONL, CSV or Parquet (the hub release is Parquet; the extension picks). Optional ``id``
or ``identifier`` column (else ``<file stem>-<line or row>``); other scalar columns go to ``meta``.

The paper scores "the first 1,000 characters of both the input text with OCR errors and the
ground-truth corrected text". That cut is *off by default* (a converted file should hold what was
released) and turned on with ``truncate_chars=1000`` (``neko data convert --truncate-chars 1000``),
which cuts input and reference alike. Without it, a text over the schema limit
(:data:`neko.schema.MAX_TEXT_CHARS`) is an error that suggests the cut.
"""

from __future__ import annotations

from typing import Any

from neko.data.readers.base import Reader, RowContext, as_object, optional_text, text_field

PAPER_TRUNCATE_CHARS = 1000
_MAIN = {"text", "corrected_text", "id", "identifier"}


def _sniff(rec: dict[str, Any]) -> bool:
    return "text" in rec and "corrected_text" in rec


def _convert(rec: Any, ctx: RowContext) -> dict[str, Any]:
    rec = as_object(rec, ctx)
    row: dict[str, Any] = {
        "task": "ocr",
        "input": text_field(rec, "text", ctx),
        "output": optional_text(rec, "corrected_text", ctx),
    }
    rid = rec.get("id", rec.get("identifier"))
    if rid is not None and rid != "":
        row["id"] = rid
    meta = {k: v for k, v in rec.items() if k not in _MAIN and isinstance(v, (str, int, float, bool))}
    if meta:
        row["meta"] = meta
    return row


READER = Reader(
    name="pleias",
    description="PleIAs post-OCR {text, corrected_text} as JSON/JSONL, CSV or Parquet",
    containers=("json", "csv", "parquet"),
    sniff=_sniff,
    convert=_convert,
    extensions=(".json", ".jsonl", ".csv", ".parquet"),
)
