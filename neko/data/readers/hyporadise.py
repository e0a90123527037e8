"""HyPoradise JSON: a list of ``{"input": [5 hypotheses, best first], "output": reference}``.

The released test sets come in these shapes, all read as the N-best list ``input`` with ``output``:
``{id, input, output, am_score}``; ``{input, output, score}`` (pretty-printed); ``{instruction, input,
output}``; ``{input, output, input1, input2}``. Scores (``am_score`` / ``score``: a list aligned with
``input``, or one number) are kept in ``meta``. ``instruction`` is the same prompt sentence on every
row and ``input1``/``input2`` repeat ``input`` as H2T-LoRA prompt text, so those are not kept: neko
builds its own prompt from ``input``. HyPoradise padded short lists with random duplicates and wrote
``<UNK>`` (or ``<unk>``) for empty hypotheses: both are converted as released (see the N-best policy
in :mod:`neko.schema`). The task is ``asr`` unless ``--task`` says otherwise.
"""

from __future__ import annotations

from typing import Any

from neko.data.readers.base import Reader, RowContext, as_object, optional_text, str_list_field

SCORE_KEYS = ("am_score", "score")


def _sniff(rec: dict[str, Any]) -> bool:
    return isinstance(rec.get("input"), list) and "output" in rec and "task" not in rec


def _convert(rec: Any, ctx: RowContext) -> dict[str, Any]:
    rec = as_object(rec, ctx)
    hyps = str_list_field(rec, "input", ctx)
    row: dict[str, Any] = {"task": "asr", "input": hyps, "output": optional_text(rec, "output", ctx)}
    if rec.get("id") is not None:
        row["id"] = rec["id"]
    meta = {}
    for key in SCORE_KEYS:
        if key in rec:
            score = rec[key]
            ok = isinstance(score, (int, float)) and not isinstance(score, bool)
            ok = ok or (isinstance(score, list) and all(isinstance(s, (int, float)) for s in score))
            if not ok:
                raise ctx.error(
                    f"expected a number or a list of numbers, got {type(score).__name__}", key, "wrong-type"
                )
            meta[key] = score
    if meta:
        row["meta"] = meta
    return row


READER = Reader(
    name="hyporadise",
    description="HyPoradise JSON list of {input: [N-best], output, id?, am_score?/score?}",
    containers=("json",),
    sniff=_sniff,
    convert=_convert,
)
