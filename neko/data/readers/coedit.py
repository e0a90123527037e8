"""CoEdIT JSONL: ``{"_id", "task", "src": "<instruction>: <text>", "tgt"}``.

The instruction before the first ``": "`` is dropped from the input (kept in ``meta.instruction``):
neko prompts with its own fixed instruction per task, so CoEdIT's many paraphrased instructions
would only teach the model to ignore them. Task mapping: ``gec`` -> ``tec-grammar``, ``coherence``
-> ``tec-coherence``; any other CoEdIT task (``clarity``, ``simplification``, ``paraphrase``,
``neutralize`` ...) becomes ``coedit-<task>`` when a task of that name is registered (a tasks config),
else the row is invalid (kind ``unknown-task``) and ``--skip-invalid`` drops it with that reason.
``--task`` overrides the mapping for every row.
"""

from __future__ import annotations

from typing import Any

from neko.data.readers.base import Reader, RowContext, as_object, optional_text, text_field

TASK_MAP = {"gec": "tec-grammar", "coherence": "tec-coherence"}
SEP = ": "


def _sniff(rec: dict[str, Any]) -> bool:
    return "src" in rec and "tgt" in rec


def map_task(coedit_task: str, ctx: RowContext) -> str:
    if ctx.task is not None:
        return ctx.task
    if coedit_task in TASK_MAP:
        return TASK_MAP[coedit_task]
    name = f"coedit-{coedit_task}"
    if name in ctx.known_tasks:
        return name
    raise ctx.error(
        f"CoEdIT task {coedit_task!r} has no neko task; register {name!r} in a tasks config "
        "(--tasks-config), force one with --task, or drop these rows with --skip-invalid",
        "task",
        "unknown-task",
    )


def _convert(rec: Any, ctx: RowContext) -> dict[str, Any]:
    rec = as_object(rec, ctx)
    src = text_field(rec, "src", ctx)
    instruction, sep, text = src.partition(SEP)
    if not sep:
        raise ctx.error("expected '<instruction>: <text>' (no ': ' found)", "src", "invalid-row")
    ctask = rec.get("task")
    if ctx.task is None:
        if ctask is None:
            raise ctx.error("missing; pass --task to set one for the whole file", "task", "missing-field")
        if not isinstance(ctask, str):
            raise ctx.error(f"expected a string, got {type(ctask).__name__}", "task", "wrong-type")
    row: dict[str, Any] = {
        "task": map_task(ctask if isinstance(ctask, str) else "", ctx),
        "input": text,
        "output": optional_text(rec, "tgt", ctx),
        "meta": {"instruction": instruction},
    }
    if isinstance(ctask, str):
        row["meta"]["coedit_task"] = ctask
    rid = rec.get("_id", rec.get("id"))
    if rid is not None:
        row["id"] = rid
    return row


READER = Reader(
    name="coedit",
    description='CoEdIT JSONL {_id, task, src: "instruction: text", tgt}',
    containers=("json",),
    sniff=_sniff,
    convert=_convert,
)
