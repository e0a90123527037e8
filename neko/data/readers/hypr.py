"""HypR (ASR hypothesis revising; AISHELL-1, TED-LIUM 2, LibriSpeech; 50-best lists).

One record per utterance, as in the HypR README: ``utt_id``, ``ref``, ``hyps`` (50 hypotheses, best
first), and per-hypothesis scores ``att_score``, ``ctc_score``, ``lm_score`` (only in the ``withLM``
sets) and ``score`` (the combined decoding score). Read from Parquet (the hub layout) or JSON/JSONL.
Scores go to ``meta`` under their own names; 50 hypotheses make long prompts, so
``read_any(..., top_n=5)`` / ``neko data convert --top-n 5`` keeps the first five and cuts every
score list alike. Task ``asr`` unless ``--task`` says otherwise.
"""

from __future__ import annotations

from typing import Any

from neko.data.readers.base import Reader, RowContext, as_object, optional_text, str_list_field

SCORE_KEYS = ("att_score", "ctc_score", "lm_score", "score")


def _sniff(rec: dict[str, Any]) -> bool:
    return "hyps" in rec and "ref" in rec


def _scores(rec: dict[str, Any], key: str, n: int, ctx: RowContext) -> list[float] | None:
    value = rec.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        raise ctx.error(f"expected a list of numbers, got {type(value).__name__}", key, "wrong-type")
    if len(value) != n:
        raise ctx.error(
            f"{len(value)} scores for {n} hypotheses; each hypothesis needs exactly one", key, "invalid-row"
        )
    return value


def _convert(rec: Any, ctx: RowContext) -> dict[str, Any]:
    rec = as_object(rec, ctx)
    hyps = str_list_field(rec, "hyps", ctx)
    row: dict[str, Any] = {"task": "asr", "input": hyps, "output": optional_text(rec, "ref", ctx)}
    if rec.get("utt_id") is not None:
        row["id"] = rec["utt_id"]
    meta = {k: s for k in SCORE_KEYS if (s := _scores(rec, k, len(hyps), ctx)) is not None}
    if meta:
        row["meta"] = meta
    return row


READER = Reader(
    name="hypr",
    description="HypR {utt_id, ref, hyps: [50-best], att_score, ctc_score, lm_score?, score} as Parquet or JSON",
    containers=("json", "parquet"),
    sniff=_sniff,
    convert=_convert,
    extensions=(".parquet", ".json", ".jsonl"),
)
