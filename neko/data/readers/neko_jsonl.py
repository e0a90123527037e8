"""The neko JSONL format itself (one row per line; see :mod:`neko.schema`).

A JSON array of neko rows is accepted too (same container logic as every JSON reader).
"""

from __future__ import annotations

from typing import Any

from neko.data.readers.base import Reader, RowContext, as_object


def _sniff(rec: dict[str, Any]) -> bool:
    return "input" in rec and "task" in rec


def _convert(rec: Any, ctx: RowContext) -> dict[str, Any]:
    return dict(as_object(rec, ctx))


READER = Reader(
    name="neko",
    description="neko JSONL rows {id, task, input, output, source_lang, target_lang, meta}",
    containers=("json",),
    sniff=_sniff,
    convert=_convert,
)
