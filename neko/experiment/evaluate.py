"""Shared evaluation steps of the quick start and the comparison: pick test rows, correct, score.

Design choices:
- Test rows are subsampled per task with a fixed seed (``rows_per_task``; 0 = all), taking the
  first rows of a seeded shuffle, so two systems are always scored on the same utterances and a
  larger budget only adds rows. On the 2-core CPU, decoding dominates the quick start's evaluation
  (about 30 new tokens/s for the 8-expert model), which is why the CPU default scores a subset.
- The unseen ``typo`` task is scored twice: 0-shot (the model has never seen the task) and 5-shot
  (five solved examples drawn once per task from the dev split, disjoint from test), as in the
  paper's appendix.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neko.data.schema import Example, read_jsonl

__all__ = ["EvalPlan", "subsample", "load_split", "predict", "score_system_outputs", "UNSEEN_TASKS"]

# Tasks kept out of training and evaluated k-shot (the paper's unseen typo-correction task).
UNSEEN_TASKS = ("typo",)


@dataclass(frozen=True)
class EvalPlan:
    """rows_per_task: test rows scored per task (0 = all). fewshot_k: shots for unseen tasks.
    max_new_tokens / batch_size: decoding budget. seed: subsampling and shot selection."""

    rows_per_task: int = 40
    fewshot_k: int = 5
    max_new_tokens: int = 96
    batch_size: int = 16
    seed: int = 0


def load_split(path: str | Path) -> list[Example]:
    """A split of the shipped benchmark (or any neko JSONL file)."""
    return read_jsonl(path)


def subsample(examples: Sequence[Example], rows_per_task: int, seed: int = 0) -> list[Example]:
    """Seeded per-task subsample (0 = all), in a stable order grouped by task."""
    by_task: dict[str, list[Example]] = {}
    for e in examples:
        by_task.setdefault(e.task, []).append(e)
    out: list[Example] = []
    for task in sorted(by_task):
        rows = list(by_task[task])
        if rows_per_task and len(rows) > rows_per_task:
            rng = random.Random(f"{seed}:{task}")
            rows = rng.sample(rows, rows_per_task)
        out.extend(rows)
    return out


def predict(
    model_dir: str | Path,
    examples: Sequence[Example],
    plan: EvalPlan,
    *,
    fewshot_pool: Sequence[Example] = (),
    fewshot_k: int = 0,
    top_k_experts: int | None = 2,
    device: str = "auto",
    guard: bool = False,
) -> list[str] | tuple[list[str], list[str]]:
    """Corrected text per example (the 1-best where correction failed, counted as the floor).

    ``guard=True`` decodes once and returns ``(guarded, raw)``: the no-harm guard with the model's
    tuned thresholds when it has them, else the defaults of :class:`neko.infer.guard.GuardConfig`.
    """
    from neko.infer.correct import Corrector
    from neko.infer.options import CorrectionOptions
    from neko.tasks import select_fewshot

    opts = CorrectionOptions(
        max_new_tokens=plan.max_new_tokens,
        batch_size=plan.batch_size,
        top_k_experts=top_k_experts,
        device=device,
        guard="on" if guard else "off",
    )
    corrector = Corrector.from_pretrained(model_dir, options=opts)
    fewshot = None
    if fewshot_k:
        # One fixed set of shots per task from the dev pool (disjoint from test), so the batch stays batched.
        fewshot = {
            t: select_fewshot(fewshot_pool, fewshot_k, t, plan.seed)
            for t in sorted({e.task for e in examples})
        }
    results = corrector.correct_batch(list(examples), fewshot=fewshot)

    def pick(r: Any, e: Example, attr: str) -> str:
        text = getattr(r, attr)
        return text if r.ok and text is not None else e.one_best

    guarded = [pick(r, e, "text") for r, e in zip(results, examples, strict=True)]
    if not guard:
        return guarded
    return guarded, [pick(r, e, "unguarded") for r, e in zip(results, examples, strict=True)]


def score_system_outputs(
    examples: Sequence[Example],
    systems: dict[str, Sequence[str]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    pairs: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """neko eval's report for ``systems`` (name -> one output per example) beside the baselines/oracles;
    ``pairs`` adds head-to-head paired bootstraps (see ``ScoreConfig.pairs``)."""
    from neko.eval.predictions import ScoredRow
    from neko.eval.score import ScoreConfig, score_rows

    rows = [ScoredRow(e, {name: outs[i] for name, outs in systems.items()}) for i, e in enumerate(examples)]
    return score_rows(rows, ScoreConfig(n_boot=n_boot, seed=seed, pairs=tuple(pairs)))
