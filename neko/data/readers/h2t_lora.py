"""H2T-LoRA JSON: ``{"input1": 1-best, "input2": the other hypotheses, "output": reference}``.

``input2`` is a list in the released files; a single string is accepted as a one-item list. The
1-best (``input1``) goes to index 0. Task ``asr`` unless ``--task`` says otherwise.
"""

from __future__ import annotations

from typing import Any

from neko.data.readers.base import Reader, RowContext, as_object, optional_text, text_field


def _sniff(rec: dict[str, Any]) -> bool:
    return "input1" in rec and "input2" in rec


def _convert(rec: Any, ctx: RowContext) -> dict[str, Any]:
    rec = as_object(rec, ctx)
    best = text_field(rec, "input1", ctx)
    others = rec.get("input2")
    if others is None:
        raise ctx.error("missing", "input2", "missing-field")
    if isinstance(others, str):
        others = [others]
    if not isinstance(others, list):
        raise ctx.error(f"expected a list of strings, got {type(others).__name__}", "input2", "wrong-type")
    for i, h in enumerate(others):
        if not isinstance(h, str):
            raise ctx.error(f"expected a string, got {type(h).__name__}", f"input2[{i}]", "wrong-type")
    row: dict[str, Any] = {
        "task": "asr",
        "input": [best, *others],
        "output": optional_text(rec, "output", ctx),
    }
    if rec.get("id") is not None:
        row["id"] = rec["id"]
    return row


READER = Reader(
    name="h2t-lora",
    description="H2T-LoRA JSON {input1: 1-best, input2: [other hypotheses], output}",
    containers=("json",),
    sniff=_sniff,
    convert=_convert,
)
