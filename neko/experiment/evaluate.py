"""Shared evaluation steps of the quick start and the comparison: correct rows, score, keep outputs.

The rows themselves (which, how many, the plan) come from :mod:`neko.experiment.rows`, re-exported
here. The unseen ``typo`` task is scored twice: 0-shot (the model has never seen the task) and
5-shot (five solved examples drawn once per task from the dev split, disjoint from test), as in the
paper's appendix. Importing this module loads torch (the correction API).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from neko.eval.predictions import ScoredRow
from neko.eval.score import ScoreConfig, score_rows
from neko.experiment.rows import UNSEEN_TASKS, EvalPlan, asr_domain, load_split, subsample, subsample_by
from neko.infer.correct import CorrectionResult, Corrector, recognizer_scores
from neko.infer.options import CorrectionOptions
from neko.infer.policy import RowScores, rescore_candidates
from neko.infer.tuning import TuneRow, task_metrics, tune_rescore
from neko.io import atomic_write_text
from neko.schema import Example, clean_nbest
from neko.tasks import select_fewshot

__all__ = [
    "EvalPlan",
    "Predictions",
    "lm_rescoring",
    "subsample",
    "load_split",
    "predict",
    "score_system_outputs",
    "write_predictions",
    "UNSEEN_TASKS",
    "asr_domain",
    "subsample_by",
]


@dataclass
class Predictions:
    """Per example: ``final`` (what ``neko correct`` returns under the options), ``generated`` (raw
    generation) and ``rescored`` (the N-best rescoring's choice; the input for single-text tasks), each
    the 1-best where that output is missing, and ``used`` (generated / rescored / input)."""

    final: list[str]
    generated: list[str]
    rescored: list[str]
    used: list[str]
    constrained: list[str] | None = None


def predict(
    model_dir: str | Path,
    examples: Sequence[Example],
    plan: EvalPlan,
    *,
    fewshot_pool: Sequence[Example] = (),
    fewshot_k: int = 0,
    top_k_experts: int | None = None,
    device: str = "auto",
    mode: str = "generate",
    guard: str = "off",
    all_outputs: bool = False,
    constrained: bool = False,
    keep_if_agree: bool | None = None,
    copy_bias: float | None = None,
) -> Predictions:
    """Correct ``examples`` (failed items count as their 1-best, the floor).

    ``mode``/``guard`` as in :class:`neko.infer.options.CorrectionOptions` (default: generation, no
    guard); ``mode="auto"`` with
    ``all_outputs`` gives the final system, raw generation and rescoring from one decode;
    ``constrained`` adds the N-best-constrained generation of every N-best row whose hypotheses do not
    agree. ``keep_if_agree``: None follows the policy (agreeing N-best rows keep their 1-best);
    False decodes every row. ``copy_bias``: None = the Corrector's default by input kind (1.5 on
    single texts, off on N-best lists; what the quick start uses); 0.0 = none. The comparison passes
    :data:`neko.experiment.config.PLAIN_DECODING`: generate, guard off, every row, no copy bias.
    """
    opts = CorrectionOptions(
        max_new_tokens=plan.max_new_tokens,
        batch_size=plan.batch_size,
        dtype=plan.dtype,
        top_k_experts=top_k_experts,
        device=device,
        mode=mode,
        guard=guard,
        keep_if_agree=keep_if_agree,
        copy_bias=copy_bias,
    )
    corrector = Corrector.from_pretrained(model_dir, options=opts)
    fewshot = None
    if fewshot_k:
        # One fixed set of shots per task from the dev pool (disjoint from test), so the batch stays batched.
        fewshot = {
            t: select_fewshot(fewshot_pool, fewshot_k, t, plan.seed)
            for t in sorted({e.task for e in examples})
        }
    prepared = [corrector.prepare(e, fewshot=fewshot, index=i) for i, e in enumerate(examples)]
    results = corrector.run(prepared, all_outputs=all_outputs, constrained=constrained)

    def pick(text: str | None, r: CorrectionResult, e: Example) -> str:
        return text if r.ok and text is not None else e.one_best

    return Predictions(
        final=[pick(r.text, r, e) for r, e in zip(results, examples, strict=True)],
        generated=[pick(r.generated, r, e) for r, e in zip(results, examples, strict=True)],
        rescored=[pick(r.rescored, r, e) for r, e in zip(results, examples, strict=True)],
        used=[(r.decision or {}).get("used", "generated") if r.ok else "input" for r in results],
        constrained=[pick(r.constrained, r, e) for r, e in zip(results, examples, strict=True)]
        if constrained
        else None,
    )


def lm_rescoring(
    base_dir: str | Path,
    dev: Sequence[Example],
    test: Sequence[Example],
    *,
    max_harm_rate: float | None = 0.1,
    batch_size: int = 16,
    dtype: str = "fp32",
) -> tuple[list[str], dict[str, Any]]:
    """The plain LM rescoring baseline: each N-best hypothesis scored by the *untrained* base as a
    language model (no prompt), plus the recognizer's own score where the row has one
    (``meta.am_score``); length normalisation, rank prior, recognizer-score weight and margin chosen
    on ``dev`` per task exactly as NeKo's own rescoring is. Returns (choice per test row, settings)."""
    scorer = Corrector.from_pretrained(
        base_dir, CorrectionOptions(mode="keep", batch_size=batch_size, dtype=dtype)
    )

    def rows(examples: Sequence[Example]) -> list[RowScores]:
        hyps = [clean_nbest(e.hypotheses, dedup=False) or [e.one_best] for e in examples]
        out = []
        for e, h, s in zip(examples, hyps, scorer.lm_scores(hyps), strict=True):
            lm, ntok = [x.logprob for x in s], [x.tokens for x in s]
            out.append(RowScores(list(h), cond=[0.0] * len(h), lm=lm, ntok=ntok, am=recognizer_scores(e)))
        return out

    metrics = task_metrics(scorer.registry, {e.task for e in [*dev, *test]})
    dev_rows = [TuneRow(e.task, r, e.output, True) for e, r in zip(dev, rows(dev), strict=True)]
    settings = {
        t: tune_rescore([r for r in dev_rows if r.task == t], metrics.get(t, "wer"), max_harm_rate)
        for t in sorted({e.task for e in test})
    }
    choice = [
        r.hypotheses[settings[e.task].choose(r.cond, r.lm, r.ntok, r.am, rescore_candidates(r.hypotheses))]
        for e, r in zip(test, rows(test), strict=True)
    ]
    return choice, {t: asdict(c) for t, c in settings.items()}


def score_system_outputs(
    examples: Sequence[Example],
    systems: dict[str, Sequence[str]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    pairs: Sequence[tuple[str, str]] = (),
    group_by: str | None = None,
) -> dict[str, Any]:
    """neko eval's report for ``systems`` (name -> one output per example) beside the baselines/oracles;
    ``pairs`` adds head-to-head paired bootstraps (see ``ScoreConfig.pairs``), ``group_by`` a per-value
    breakdown by a ``meta`` key (e.g. ``voice``)."""
    rows = [ScoredRow(e, {name: outs[i] for name, outs in systems.items()}) for i, e in enumerate(examples)]
    return score_rows(rows, ScoreConfig(n_boot=n_boot, seed=seed, pairs=tuple(pairs), group_by=group_by))


def write_predictions(path: Path, examples: Sequence[Example], outputs: Mapping[str, Sequence[str]]) -> None:
    """One JSONL row per example with each output in a field of its name, so ``neko eval --pred
    PATH --systems NAME,...`` re-scores every system the run scored."""
    lines = []
    for i, e in enumerate(examples):
        row = e.to_dict()
        row.update({name: texts[i] for name, texts in outputs.items()})
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    atomic_write_text(path, "".join(lines))
