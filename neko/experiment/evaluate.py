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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from neko.schema import Example, clean_nbest, read_jsonl

__all__ = [
    "EvalPlan",
    "Predictions",
    "lm_rescoring",
    "subsample",
    "load_split",
    "predict",
    "score_system_outputs",
    "UNSEEN_TASKS",
    "asr_domain",
    "subsample_by",
]

# Tasks kept out of training and evaluated k-shot (the paper's unseen typo-correction task).
UNSEEN_TASKS = ("typo",)


@dataclass(frozen=True)
class EvalPlan:
    """rows_per_task: test rows scored per task (0 = all). fewshot_k: shots for unseen tasks.
    max_new_tokens / batch_size: decoding budget. seed: subsampling and shot selection."""

    rows_per_task: int = 40
    fewshot_k: int = 5
    max_new_tokens: int | None = None  # None: per row, from its input's length
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


def asr_domain(e: Example) -> str:
    """Which recognizer's output an ASR row holds, and whether its condition was held out: the
    PocketSphinx rows carry no ``meta.recognizer``; Whisper rows name theirs (``whisper-tiny.en``,
    ``whisper-tiny.en 0-shot`` for held-out conditions); released sets (``neko data add-nbest``) are
    their name and recognizer (``atis (whisper-large)``)."""
    meta = e.meta if isinstance(e.meta, dict) else {}
    rec = meta.get("recognizer")
    if rec is None:
        return "pocketsphinx"
    if str(e.id).startswith("asr-whisper-"):
        return f"{rec} 0-shot" if meta.get("zeroshot") else str(rec)
    return f"{meta.get('condition', 'released')} ({rec})"


def subsample_by(
    examples: Sequence[Example], counts: dict[str, int], key: Any, seed: int = 0
) -> list[Example]:
    """Seeded subsample of ``counts[key(e)]`` rows per stratum (0 = all; strata not in ``counts``
    are dropped), in a stable order grouped by stratum."""
    by_key: dict[str, list[Example]] = {}
    for e in examples:
        by_key.setdefault(key(e), []).append(e)
    out: list[Example] = []
    for k in sorted(by_key):
        if k not in counts:
            continue
        rows = list(by_key[k])
        if counts[k] and len(rows) > counts[k]:
            rows = random.Random(f"{seed}:{k}").sample(rows, counts[k])
        out.extend(rows)
    return out


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
) -> Predictions:
    """Correct ``examples`` (failed items count as their 1-best, the floor).

    ``mode``/``guard`` as in :class:`neko.infer.options.CorrectionOptions` (the default, plain
    generation, is what the comparison of training methods scores); ``mode="auto"`` with
    ``all_outputs`` gives the final system, raw generation and rescoring from one decode;
    ``constrained`` adds the N-best-constrained generation of every N-best row whose hypotheses do not
    agree. ``keep_if_agree``: None follows the policy (agreeing N-best rows keep their 1-best);
    False decodes every row (plain generation, as the comparison of training methods scores it).
    """
    from neko.infer.correct import Corrector
    from neko.infer.options import CorrectionOptions
    from neko.tasks import select_fewshot

    opts = CorrectionOptions(
        max_new_tokens=plan.max_new_tokens,
        batch_size=plan.batch_size,
        top_k_experts=top_k_experts,
        device=device,
        mode=mode,
        guard=guard,
        keep_if_agree=keep_if_agree,
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

    def pick(text: str | None, r: Any, e: Example) -> str:
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
) -> tuple[list[str], dict[str, Any]]:
    """The plain LM rescoring baseline: each N-best hypothesis scored by the *untrained* base as a
    language model (no prompt), plus the recognizer's own score where the row has one
    (``meta.am_score``); length normalisation, rank prior, recognizer-score weight and margin chosen
    on ``dev`` per task exactly as NeKo's own rescoring is. Returns (choice per test row, settings)."""
    from neko.infer.correct import Corrector, recognizer_scores
    from neko.infer.options import CorrectionOptions
    from neko.infer.policy import RowScores, TuneRow, rescore_candidates, tune_rescore
    from neko.infer.tuning import task_metrics

    scorer = Corrector.from_pretrained(base_dir, CorrectionOptions(mode="keep", batch_size=batch_size))

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
    from neko.eval.predictions import ScoredRow
    from neko.eval.score import ScoreConfig, score_rows

    rows = [ScoredRow(e, {name: outs[i] for name, outs in systems.items()}) for i, e in enumerate(examples)]
    return score_rows(rows, ScoreConfig(n_boot=n_boot, seed=seed, pairs=tuple(pairs), group_by=group_by))
