"""Tune a model's correction policy on dev data: decode once with every output, search, save.

``tune_on_dev`` is what ``neko policy tune`` and the quick start run: correct the dev rows with
``all_outputs`` (raw generation, candidate scores for every hypothesis and for the generated text)
and, on N-best rows whose hypotheses do not agree, the N-best-constrained generation too (one more
generation pass, scored alike), turn them into :class:`neko.infer.policy.TuneRow` s and let :func:`neko.infer.policy.tune_policy`
choose each task's mode and thresholds. Prediction files written with ``--details`` carry the same
scores, so tuning can also start from an earlier decode (``rows_from_predictions``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from neko.infer.policy import Policy, RowScores, TuneRow, save_policy, tune_policy
from neko.schema import Example

__all__ = ["tune_on_dev", "rows_from_predictions", "task_metrics"]


def task_metrics(registry: Any, tasks: Iterable[str]) -> dict[str, str]:
    return {t: registry.get(t).metric for t in tasks if t in registry}


def rows_from_predictions(rows: Iterable[dict[str, Any]], registry: Any) -> list[TuneRow]:
    """TuneRows from prediction rows written with ``details`` (and ``all_outputs``); rows without
    a reference, without scores or with an error are skipped (there is nothing to learn from them)."""
    out = []
    for i, row in enumerate(rows):
        if row.get("error") is not None or row.get("output") is None:
            continue
        s = (row.get("details") or {}).get("scores")
        if s is None:
            raise ValueError(
                f"prediction row #{i} ({row.get('id')!r}) has no candidate scores; decode the dev file with "
                "`neko policy tune --model M --dev DEV` (or `neko correct --all-outputs --details`)"
            )
        task = row.get("task")
        nbest = (
            registry.get(task).input_kind == "nbest" if task in registry else isinstance(row["input"], list)
        )
        out.append(TuneRow(task, RowScores(**s), row["output"], nbest))
    return out


def tune_on_dev(
    model_dir: str | Path,
    dev: Sequence[Example],
    *,
    work_dir: str | Path | None = None,
    options: Any = None,
    max_harm_rate: float | None = 0.1,
    min_gain: float = 0.02,
    min_task_rows: int = 20,
    normalizer: str = "whisper",
    progress: bool = True,
) -> Policy:
    """Decode ``dev`` (rows with references) with every output, tune the policy, save it beside the
    model (``neko_policy.json``) and return it. ``work_dir`` keeps the dev decode (resumable)."""
    from dataclasses import replace

    from neko.infer.files import correct_file
    from neko.infer.options import CorrectionOptions
    from neko.io import atomic_write_text
    from neko.tasks import load_prompt_config

    model_dir = Path(model_dir)
    work = Path(work_dir) if work_dir is not None else model_dir
    work.mkdir(parents=True, exist_ok=True)
    rows = [e for e in dev if e.output is not None]
    if not rows:
        raise ValueError("no dev rows with a reference ('output') to tune the correction policy on")
    src, pred = work / "policy_dev.jsonl", work / "policy_dev_predictions.jsonl"
    atomic_write_text(src, "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in rows))
    # Decode with the policy the model has now switched off, so tuning sees the raw outputs.
    opts = replace(options or CorrectionOptions(), mode="generate", guard="off")
    correct_file(
        model_dir,
        src,
        pred,
        options=opts,
        details=True,
        all_outputs=True,
        constrained=True,
        overwrite=True,
        progress=progress,
    )
    preds = [json.loads(line) for line in pred.read_text(encoding="utf-8").splitlines() if line.strip()]
    registry, _ = load_prompt_config(model_dir)
    tune_rows = rows_from_predictions(preds, registry)
    policy = tune_policy(
        tune_rows,
        metrics=task_metrics(registry, {r.task for r in tune_rows}),
        max_harm_rate=max_harm_rate,
        normalizer=normalizer,
        min_task_rows=min_task_rows,
        min_gain=min_gain,
    )
    save_policy(model_dir, policy)
    return policy
