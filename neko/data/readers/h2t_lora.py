"""H2T-LoRA JSON: ``{"input1": 1-best, "input2": the other hypotheses, "output": reference}``.

As released (the HyPoradise JSON files), the fields are prompt text, not lists: ``input1`` is the
1-best followed by ``"."`` and ``input2`` is *one string* holding hypotheses 2..N, each followed by
``". "``: ``{"input1": "a cat sat.", "input2": "the cat sat. a cat sad. "}``. We undo exactly what
that layout added: one trailing ``"."`` of ``input1``, the final ``". "`` of ``input2`` (or a bare
``"."`` when trailing spaces were trimmed), then split ``input2`` on ``". "``. A list ``input2`` (as
some conversions write it) is taken item by item, unchanged. The 1-best goes to index 0. Task ``asr``
unless ``--task`` says otherwise.
"""

from __future__ import annotations

from typing import Any

from neko.data.readers.base import Reader, RowContext, as_object, optional_text, text_field

SEP = ". "


def _sniff(rec: dict[str, Any]) -> bool:
    return "input1" in rec and "input2" in rec


def split_others(text: str) -> list[str]:
    """Hypotheses 2..N from the released ``input2`` string (``""``: none; ``". "``: one empty one)."""
    if not text:
        return []
    if text.endswith(SEP):
        text = text[: -len(SEP)]
    elif text.endswith("."):
        text = text[:-1]
    return text.split(SEP)


def _convert(rec: Any, ctx: RowContext) -> dict[str, Any]:
    rec = as_object(rec, ctx)
    best = text_field(rec, "input1", ctx).removesuffix(".")
    others = rec.get("input2")
    if others is None:
        raise ctx.error("missing", "input2", "missing-field")
    if isinstance(others, str):
        others = split_others(others)
    if not isinstance(others, list):
        raise ctx.error(
            f"expected a string (hypotheses joined by '. ') or a list of strings, got {type(others).__name__}",
            "input2",
            "wrong-type",
        )
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
    description='H2T-LoRA JSON {input1: "1-best.", input2: "hyp 2. hyp 3. ... ", output}',
    containers=("json",),
    sniff=_sniff,
    convert=_convert,
)
