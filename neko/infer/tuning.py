"""Tuning a model's correction policy on dev data: the grid search, and the dev decode it reads.

:func:`tune_policy` chooses each task's mode and thresholds on dev rows by grid search: fewest errors
(highest BLEU for translation) subject to a cap on the harm rate (share of rows made worse than the
1-best). Modes are tried from the simplest (keep, rescore, constrained, generate); each replaces the
one chosen so far only when it gains at least ``min_gain`` of the 1-best's dev errors over it: gains
of a row or two on a small dev set are noise, and a policy that changes less generalises better to
data unlike dev. Tasks without their own policy (unseen tasks, too few dev rows) use the default
tuned on the pooled rows of the same input kind (N-best or single text). The policy is saved beside
the weights as ``neko_policy.json``; what it does at inference is :mod:`neko.infer.policy`.

``tune_on_dev`` is what ``neko policy tune`` and the quick start run: correct the dev rows with
``all_outputs`` (raw generation, candidate scores for every hypothesis and for the generated text)
and, on N-best rows whose hypotheses do not agree, the N-best-constrained generation too (one more
generation pass, scored alike), turn them into :class:`TuneRow` s and let :func:`tune_policy`
choose each task's mode and thresholds. Prediction files written with ``--details`` carry the same
scores, so tuning can also start from an earlier decode (``rows_from_predictions``).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from neko.infer.files import correct_file
from neko.infer.guard import INF, GuardConfig, GuardFeatures, guard_features, word_edit_distance
from neko.infer.options import CorrectionOptions
from neko.infer.policy import (
    Policy,
    RescoreConfig,
    RowScores,
    TaskPolicy,
    generation_margin,
    hypotheses_agree,
    rescore_candidates,
    save_policy,
)
from neko.io import atomic_write_text
from neko.metrics.bleu import bleu_from_stats, sentence_bleu_from_stats, sentence_stats
from neko.metrics.normalizers import get_normalizer
from neko.schema import Example
from neko.tasks import TaskRegistry, load_prompt_config

__all__ = [
    "TuneRow",
    "rows_from_predictions",
    "task_metrics",
    "tune_on_dev",
    "tune_policy",
    "tune_rescore",
]

# --------------------------------------------------------------------------- grid search


@dataclass
class TuneRow:
    """A dev row with its scores and reference, for :func:`tune_policy`."""

    task: str
    scores: RowScores
    reference: str
    nbest: bool


class _Quality:
    """Per row and candidate (hypotheses..., generated, constrained) quality, and the corpus metric
    of a choice. ``agree``: rows whose hypotheses agree (:func:`hypotheses_agree`); with
    ``keep_if_agree`` every choice but the raw generation's keeps their 1-best, as inference does."""

    def __init__(self, rows: list[TuneRow], metric: str, normalizer: str, keep_if_agree: bool = True) -> None:
        self.metric = metric
        self.n = len(rows)
        width = max(len(r.scores.hypotheses) for r in rows) + 2
        self.gen_col, self.con_col = width - 2, width - 1
        self.agree = np.array([keep_if_agree and hypotheses_agree(r.scores.hypotheses) for r in rows])
        texts = [list(r.scores.hypotheses) + [""] * (width - 2 - len(r.scores.hypotheses)) for r in rows]
        for t, r in zip(texts, rows, strict=True):
            for g in (r.scores.generated, r.scores.con_generated):
                t.append(g if g is not None else r.scores.hypotheses[0])
        refs = [r.reference for r in rows]
        if metric == "bleu":
            self.stats = np.stack(
                [sentence_stats(refs, [t[c] for t in texts]) for c in range(width)], axis=1
            )  # (R, C, S)
            self.sent = np.array(
                [sentence_bleu_from_stats(self.stats[:, c]) for c in range(width)]
            ).T  # (R, C)
        else:
            norm = get_normalizer(normalizer)
            ref_words = [norm(x).split() for x in refs]
            self.err = np.array(
                [
                    [word_edit_distance(rw, norm(t[c]).split()) for c in range(width)]
                    for rw, t in zip(ref_words, texts, strict=True)
                ],
                dtype=np.int64,
            )
            self.ref_words = max(sum(len(w) for w in ref_words), 1)

    def evaluate(self, choice: np.ndarray, raw: bool = False) -> tuple[float, int]:
        """(loss: WER errors, or -BLEU; rows made worse than the 1-best) of one candidate per row
        (``raw``: as given, without keeping the rows whose hypotheses agree)."""
        rows = np.arange(self.n)
        if not raw:
            choice = np.where(self.agree, 0, choice)
        if self.metric == "bleu":
            summed = self.stats[rows, choice].sum(0)
            harm = int((self.sent[rows, choice] < self.sent[:, 0] - 1e-9).sum())
            return -bleu_from_stats(summed), harm
        chosen = self.err[rows, choice]
        return float(chosen.sum()), int((chosen > self.err[:, 0]).sum())

    def rate(self, loss: float) -> float:
        """Loss as the task's metric: WER in [0, 1] or BLEU."""
        return -loss if self.metric == "bleu" else loss / self.ref_words


def _padded(rows: list[TuneRow], attr: str, fill: float) -> np.ndarray:
    width = max(len(r.scores.hypotheses) for r in rows)
    out = np.full((len(rows), width), fill, dtype=np.float64)
    for i, r in enumerate(rows):
        v = getattr(r.scores, attr)
        if v is not None:  # e.g. no recognizer scores on this row: the fill
            out[i, : len(v)] = v
    return out


def _candidates(rows: list[TuneRow]) -> np.ndarray:
    width = max(len(r.scores.hypotheses) for r in rows)
    out = np.zeros((len(rows), width), dtype=bool)
    for i, r in enumerate(rows):
        ok = rescore_candidates(r.scores.hypotheses)
        out[i, : len(ok)] = ok
    return out


RESCORE_GRID = {
    "alpha": (0.0, 0.5, 1.0),
    "cond_weight": (0.0, 0.25, 0.5, 0.75, 1.0),
    "rank_weight": (0.0, 0.1, 0.25, 0.5, 1.0, 2.0),
    "margin": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
}
# Searched only when some dev row has recognizer scores. Our per-token LM scores are ~-1..-5 per
# token, recognizers' length-normalised log-probs ~-0.2..-1: a weight of 1-4 puts them on par.
AM_WEIGHT_GRID = (0.0, 0.5, 1.0, 2.0, 4.0)


def _rescore_choices(rows: list[TuneRow], cfg: RescoreConfig, arrays: tuple[np.ndarray, ...]) -> np.ndarray:
    cond, lm, ntok, valid, am = arrays
    s = (cfg.cond_weight * cond + (1 - cfg.cond_weight) * lm) / np.maximum(ntok, 1) ** cfg.alpha
    s = s + cfg.am_weight * am  # rows without recognizer scores hold zeros: no effect
    s = s - cfg.rank_weight * np.arange(s.shape[1])[None, :]
    s = np.where(valid, s, -np.inf)
    j = s.argmax(1)
    gain = s[np.arange(len(rows)), j] - s[:, 0]
    return np.where(gain > cfg.margin, j, 0)


def _better(key: tuple, best: tuple | None) -> bool:
    return best is None or key < best


def _search_rescore(
    rows: list[TuneRow], q: _Quality, cap: int
) -> tuple[RescoreConfig, np.ndarray, float, int]:
    scored = all(r.scores.cond is not None and r.scores.lm is not None for r in rows)
    keep = np.zeros(len(rows), dtype=np.int64)
    if not scored or max(len(r.scores.hypotheses) for r in rows) < 2:
        loss, harm = q.evaluate(keep)
        return RescoreConfig(), keep, loss, harm
    arrays = (
        _padded(rows, "cond", 0.0),
        _padded(rows, "lm", 0.0),
        _padded(rows, "ntok", 1.0),
        # valid = not padding, and a rescoring candidate (rescore_candidates)
        (_padded(rows, "cond", np.nan) == _padded(rows, "cond", np.nan)) & _candidates(rows),
        _padded(rows, "am", 0.0),
    )
    am_grid = AM_WEIGHT_GRID if any(r.scores.am is not None for r in rows) else (0.0,)
    best = None
    for a, w, lam, m, wa in itertools.product(*RESCORE_GRID.values(), am_grid):
        cfg = RescoreConfig(a, w, lam, m, wa)
        choice = np.where(q.agree, 0, _rescore_choices(rows, cfg, arrays))
        loss, harm = q.evaluate(choice)
        changed = int((choice != 0).sum())
        # within the harm cap: lowest loss, then fewest changes, then the largest margin and rank
        # prior, then the smallest weight on the recognizer's score
        key = (harm > cap, loss if harm <= cap else harm, changed, -m, -lam, wa)
        if _better(key, best[0] if best else None):
            best = (key, cfg, choice, loss, harm)
    _, cfg, choice, loss, harm = best
    return cfg, choice, loss, harm


def _guard_grid(logprobs: list[float], margins: list[float]) -> list[GuardConfig]:
    lp = sorted(logprobs)
    lp_cuts = [-INF] + sorted(
        {lp[int(x * (len(lp) - 1))] for x in (0.05, 0.1, 0.2, 0.3, 0.5)} if lp else set()
    )
    m_cuts = [-INF] + ([0.0, 0.5, 1.0, 2.0, 4.0, 8.0] if margins else [])
    return [
        GuardConfig(e, lo, hi, m, mm)
        for e, lo, hi, m, mm in itertools.product(
            (0.1, 0.2, 0.3, 0.5, 0.8, INF), (0.0, 0.5, 0.8), (1.25, 1.5, 2.0, INF), lp_cuts, m_cuts
        )
    ]


def _search_guard(
    rows: list[TuneRow],
    q: _Quality,
    cap: int,
    fallback: np.ndarray,
    policy: TaskPolicy,
    mode: str = "generate",
) -> tuple[GuardConfig, np.ndarray, float, int]:
    """The guard for the generation of ``mode`` (generate or constrained)."""
    feats: list[GuardFeatures] = []
    for r, f in zip(rows, fallback, strict=True):
        text, _, _, _, mean_lp = r.scores.generation(mode)
        feats.append(
            guard_features(
                r.scores.hypotheses, text or "", mean_lp, generation_margin(policy, r.scores, int(f), mode)
            )
        )
    edit = np.array([f.edit_to_nearest for f in feats])
    ratio = np.array([f.length_ratio for f in feats])
    lp = np.array([-INF if f.mean_logprob is None else f.mean_logprob for f in feats])
    has_lp = np.array([f.mean_logprob is not None for f in feats])
    margin = np.array([-INF if f.margin is None else f.margin for f in feats])
    has_margin = np.array([f.margin is not None for f in feats])
    empty = np.array([f.empty for f in feats])
    grid = _guard_grid(
        [f.mean_logprob for f in feats if f.mean_logprob is not None],
        [f.margin for f in feats if f.margin is not None],
    )
    best = None
    for cfg in grid:
        accept = (
            ~empty
            & (edit <= cfg.max_edit)
            & (ratio >= cfg.min_length_ratio)
            & (ratio <= cfg.max_length_ratio)
            & (~has_lp | (lp >= cfg.min_mean_logprob))
            & (~has_margin | (margin >= cfg.min_margin))
        )
        choice = np.where(accept & ~q.agree, q.con_col if mode == "constrained" else q.gen_col, fallback)
        loss, harm = q.evaluate(choice)
        key = (harm > cap, loss if harm <= cap else harm, int(accept.sum()), -cfg.min_margin)
        if _better(key, best[0] if best else None):
            best = (key, cfg, choice, loss, harm)
    _, cfg, choice, loss, harm = best
    return cfg, choice, loss, harm


def tune_rescore(
    rows: Sequence[TuneRow],
    metric: str = "wer",
    max_harm_rate: float | None = 0.1,
    normalizer: str = "whisper",
    keep_if_agree: bool = False,
) -> RescoreConfig:
    """The rescoring settings alone (e.g. plain LM rescoring: ``lm`` only), chosen on dev.
    ``keep_if_agree``: score the rows whose hypotheses agree as their 1-best (as a policy would)."""
    rows = list(rows)
    if not rows:
        return RescoreConfig()
    q = _Quality(rows, metric, normalizer, keep_if_agree)
    cap = len(rows) if max_harm_rate is None else int(math.floor(max_harm_rate * len(rows) + 1e-9))
    return _search_rescore(rows, q, cap)[0]


def _tune_rows(
    rows: list[TuneRow],
    metric: str,
    max_harm_rate: float | None,
    normalizer: str,
    min_gain: float,
    keep_if_agree: bool = True,
) -> tuple[TaskPolicy, dict[str, Any]]:
    q = _Quality(rows, metric, normalizer, keep_if_agree)
    cap = len(rows) if max_harm_rate is None else int(math.floor(max_harm_rate * len(rows) + 1e-9))
    keep_loss, _ = q.evaluate(np.zeros(len(rows), dtype=np.int64))
    rescore, r_choice, r_loss, r_harm = _search_rescore(rows, q, cap)
    nbest = max(len(r.scores.hypotheses) for r in rows) > 1
    # mode -> (guard, loss, harm) of each guarded generation the rows have outputs for
    guarded: dict[str, tuple[GuardConfig, float, int]] = {}
    raw: dict[str, tuple[float, int]] = {}
    for gmode, col, attr in (
        ("generate", q.gen_col, "generated"),
        ("constrained", q.con_col, "con_generated"),
    ):
        if not any(getattr(r.scores, attr) is not None for r in rows):
            continue
        raw[gmode] = q.evaluate(np.full(len(rows), col), raw=True)
        # The guard's margin is measured with the rescoring's score; where there is nothing to
        # rescore (single texts), the score the margin uses is chosen with the guard instead.
        scorers = (
            [rescore]
            if nbest
            else [RescoreConfig(a, w, 0.0, 0.0) for a in (0.0, 1.0) for w in (0.0, 0.5, 1.0)]
        )
        best = None
        for scorer in scorers:
            cfg, _, loss, harm = _search_guard(rows, q, cap, r_choice, TaskPolicy(gmode, scorer), gmode)
            key = (harm > cap, loss if harm <= cap else harm)
            if best is None or key < best[0]:
                best = (key, scorer, cfg, loss, harm)
        _, scorer, cfg, loss, harm = best
        guarded[gmode] = (cfg, loss, harm)
        if not nbest and gmode == "generate":
            rescore = scorer
    # Modes from the simplest: each replaces the one chosen so far only if it gains min_gain of the
    # 1-best's loss (BLEU: of its BLEU) over it, within the harm cap.
    need = min_gain * abs(keep_loss) if metric == "bleu" else max(2.0, min_gain * keep_loss)
    mode, loss, harm, guard = "keep", keep_loss, 0, GuardConfig()
    if r_harm <= cap and keep_loss - r_loss >= need:
        mode, loss, harm = "rescore", r_loss, r_harm
    for gmode in ("constrained", "generate"):
        if gmode in guarded:
            cfg, g_loss, g_harm = guarded[gmode]
            if g_harm <= cap and loss - g_loss >= need:
                mode, loss, harm, guard = gmode, g_loss, g_harm, cfg
    if mode in ("keep", "rescore") and "generate" in guarded:
        guard = guarded["generate"][0]  # a forced --mode generate gets the tuned guard
    report = _tune_report(q, metric, keep_loss, (r_loss, r_harm), guarded, raw, (mode, loss, harm))
    return TaskPolicy(mode, rescore, guard, keep_if_agree), report


def _tune_report(
    q: _Quality,
    metric: str,
    keep_loss: float,
    rescored: tuple[float, int],
    guarded: dict[str, tuple[GuardConfig, float, int]],
    raw: dict[str, tuple[float, int]],
    chosen: tuple[str, float, int],
) -> dict[str, Any]:
    """What ``report["tasks"][task]`` says: each mode's dev score and harm rate, and the choice."""
    r_loss, r_harm = rescored
    mode, loss, harm = chosen

    def rate(x: float | None) -> float | None:
        return None if x is None else round(q.rate(x), 6)

    def harm_rate(x: int | None) -> float | None:
        return None if x is None else round(x / q.n, 4)

    g = guarded.get("generate", (None, None, None))
    c = guarded.get("constrained", (None, None, None))
    modes = {
        name: None
        if lo is None
        else {
            "score": rate(lo),
            # WER tasks: word errors on the dev rows (after the normalizer); BLEU tasks: None
            "errors": None if metric == "bleu" else int(round(lo)),
            "harm_rate": harm_rate(h),
        }
        for name, lo, h in (
            ("keep", keep_loss, 0),
            ("rescore", r_loss, r_harm),
            ("generate", g[1], g[2]),
            ("constrained", c[1], c[2]),
        )
    }
    return {
        "rows": q.n,
        "metric": metric,
        "agree_rows": int(q.agree.sum()),
        "keep": rate(keep_loss),
        "rescore": rate(r_loss),
        "rescore_harm_rate": harm_rate(r_harm),
        "generate_raw": rate(raw.get("generate", (None,))[0]),
        "generate_raw_harm_rate": harm_rate(raw.get("generate", (None, None))[1]),
        "generate_guarded": rate(g[1]),
        "generate_guarded_harm_rate": harm_rate(g[2]),
        "constrained_raw": rate(raw.get("constrained", (None,))[0]),
        "constrained_raw_harm_rate": harm_rate(raw.get("constrained", (None, None))[1]),
        "constrained_guarded": rate(c[1]),
        "constrained_guarded_harm_rate": harm_rate(c[2]),
        "modes": modes,
        "chosen": mode,
        "chosen_score": rate(loss),
        "chosen_harm_rate": harm_rate(harm),
    }


def tune_policy(
    rows: Sequence[TuneRow],
    *,
    metrics: dict[str, str],
    max_harm_rate: float | None = 0.1,
    normalizer: str = "whisper",
    min_task_rows: int = 20,
    min_gain: float = 0.02,
    keep_if_agree: bool = True,
) -> Policy:
    """Choose every task's mode and thresholds on dev rows (see the module docstring).

    ``metrics``: task -> ``wer`` or ``bleu``. Tasks with at least ``min_task_rows`` rows get their own
    policy; the defaults are tuned on the pooled WER-task rows of each input kind (N-best, text).
    ``constrained`` is a candidate where rows carry constrained generations (``con_generated``);
    ``keep_if_agree`` is saved in every task's policy and the dev rows are scored with it.
    ``report["tasks"][task]["modes"]`` holds each mode's dev score, errors and harm rate.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("no dev rows to tune the correction policy on")
    per_task: dict[str, TaskPolicy] = {}
    reports: dict[str, Any] = {}
    for task in sorted({r.task for r in rows}):
        sub = [r for r in rows if r.task == task]
        if len(sub) >= min_task_rows:
            per_task[task], reports[task] = _tune_rows(
                sub, metrics.get(task, "wer"), max_harm_rate, normalizer, min_gain, keep_if_agree
            )
    defaults: dict[bool, TaskPolicy] = {}
    for nbest in (True, False):
        pool = [r for r in rows if r.nbest == nbest and metrics.get(r.task, "wer") == "wer"]
        if pool:
            defaults[nbest], reports[f"default_{'nbest' if nbest else 'text'}"] = _tune_rows(
                pool, "wer", max_harm_rate, normalizer, min_gain, keep_if_agree
            )
        else:  # nothing to learn from: the safe choice
            defaults[nbest] = TaskPolicy("keep", keep_if_agree=keep_if_agree)
    report = {
        "normalizer": normalizer,
        "max_harm_rate": max_harm_rate,
        "min_gain": min_gain,
        "tasks": reports,
    }
    return Policy(per_task, defaults[True], defaults[False], report)


# --------------------------------------------------------------------------- from dev data


def task_metrics(registry: TaskRegistry, tasks: Iterable[str]) -> dict[str, str]:
    return {t: registry.get(t).metric for t in tasks if t in registry}


def rows_from_predictions(rows: Iterable[dict[str, Any]], registry: TaskRegistry) -> list[TuneRow]:
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
    options: CorrectionOptions | None = None,
    max_harm_rate: float | None = 0.1,
    min_gain: float = 0.02,
    min_task_rows: int = 20,
    normalizer: str = "whisper",
    progress: bool = True,
) -> Policy:
    """Decode ``dev`` (rows with references) with every output, tune the policy, save it beside the
    model (``neko_policy.json``) and return it. ``work_dir`` keeps the dev decode (resumable)."""
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
