"""The correction policy: per task, keep the input, rescore the N-best list, or generate (guarded).

A small model trained for minutes can rewrite a page for the worse; the same model can still pick
the best of five hypotheses well. So what ``neko correct`` returns is decided per task, on dev data,
among three modes, and every row says which one was used:

- ``keep``: the input (hypothesis index 0) unchanged.
- ``rescore``: the hypothesis with the best score
  ``(w * log P(h | task prompt) + (1 - w) * log P(h | answer)) / tokens(h)**alpha - rank_weight * rank(h)``,
  and only if it beats the 1-best's score by ``margin`` (:class:`RescoreConfig`). ``log P(h | answer)``
  is the same model asked to answer an empty input: a language model of what its answers look like
  (clean, corrected text), which on our ASR dev rows ranks hypotheses better than the task-prompt
  score or the untrained base as a plain LM (bench/NOTES.md). The rank prior keeps the recognizer's
  own order unless the model disagrees clearly.
- ``generate``: the model's own correction, accepted only if the no-harm guard passes it
  (:class:`neko.infer.guard.GuardConfig`: edit distance to the nearest hypothesis, length ratio,
  confidence, and how much more the model likes it than the rescored choice); otherwise the
  rescored choice (the 1-best for single-text tasks) is returned.

:func:`tune_policy` chooses each task's mode and thresholds on dev rows by grid search: fewest errors
(highest BLEU for translation) subject to a cap on the harm rate (share of rows made worse than the
1-best). A mode replaces ``keep`` (and ``generate`` replaces ``rescore``) only when it gains at least
``min_gain`` of the 1-best's dev errors: gains of a row or two on a small dev set are noise, and a
policy that changes less generalises better to data unlike dev. Tasks without their own policy
(unseen tasks, too few dev rows) use the default tuned on the pooled rows of the same input kind
(N-best or single text). The policy is saved beside the weights as ``neko_policy.json``.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from neko.infer.guard import INF, GuardConfig, GuardFeatures, guard_features

__all__ = [
    "MODES",
    "POLICY_FILE",
    "RescoreConfig",
    "TaskPolicy",
    "Policy",
    "RowScores",
    "Decision",
    "decide",
    "tune_policy",
    "tune_rescore",
    "TuneRow",
    "load_policy",
    "save_policy",
]

Mode = Literal["generate", "rescore", "keep"]
MODES: tuple[str, ...] = ("generate", "rescore", "keep")
POLICY_FILE = "neko_policy.json"
LEGACY_GUARD_FILE = "neko_guard.json"


@dataclass(frozen=True)
class RescoreConfig:
    """How N-best hypotheses are scored and when the 1-best is left."""

    # Length normalisation: score / tokens**alpha (0 = summed log-prob, 1 = per-token mean).
    alpha: float = 0.5
    # Weight of the task-prompt score log P(h | prompt); the answer-LM score log P(h | answer) gets
    # the rest (0 = the answer LM alone, 1 = the task prompt alone).
    cond_weight: float = 0.0
    # Subtracted per rank position: the recognizer's order is evidence too.
    rank_weight: float = 0.5
    # Leave the 1-best only for a hypothesis scoring at least this much higher (after the rank prior).
    margin: float = 1.0

    def scores(self, cond: Sequence[float], lm: Sequence[float], ntok: Sequence[int]) -> list[float]:
        """The model's score of each candidate, without the rank prior."""
        w = self.cond_weight
        return [
            (w * c + (1 - w) * m) / (max(n, 1) ** self.alpha) for c, m, n in zip(cond, lm, ntok, strict=True)
        ]

    def choose(self, cond: Sequence[float], lm: Sequence[float], ntok: Sequence[int]) -> int:
        """Index of the chosen hypothesis (0 = the 1-best)."""
        s = [x - self.rank_weight * i for i, x in enumerate(self.scores(cond, lm, ntok))]
        j = int(np.argmax(s))
        return j if s[j] - s[0] > self.margin else 0


@dataclass(frozen=True)
class TaskPolicy:
    mode: Mode = "generate"
    rescore: RescoreConfig = field(default_factory=RescoreConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "rescore": asdict(self.rescore), "guard": self.guard.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskPolicy:
        mode = d.get("mode", "generate")
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        unknown = set(d.get("rescore") or {}) - {f for f in asdict(RescoreConfig())}
        if unknown:
            raise ValueError(f"unknown rescore setting(s) {sorted(unknown)}")
        rescore = RescoreConfig(**{k: float(v) for k, v in (d.get("rescore") or {}).items()})
        return cls(mode, rescore, GuardConfig.from_dict(d.get("guard") or {}))


@dataclass(frozen=True)
class Policy:
    """Per-task policies, with defaults for tasks dev had none for (by input kind)."""

    per_task: dict[str, TaskPolicy] = field(default_factory=dict)
    default_nbest: TaskPolicy = field(default_factory=TaskPolicy)
    default_text: TaskPolicy = field(default_factory=TaskPolicy)
    report: dict[str, Any] = field(default_factory=dict)

    def for_task(self, task: str | None, nbest: bool) -> TaskPolicy:
        own = self.per_task.get(task or "")
        if own is not None:
            return own
        return self.default_nbest if nbest else self.default_text

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_task": {k: v.to_dict() for k, v in self.per_task.items()},
            "default_nbest": self.default_nbest.to_dict(),
            "default_text": self.default_text.to_dict(),
            "report": self.report,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Policy:
        return cls(
            per_task={k: TaskPolicy.from_dict(v) for k, v in (d.get("per_task") or {}).items()},
            default_nbest=TaskPolicy.from_dict(d.get("default_nbest") or {}),
            default_text=TaskPolicy.from_dict(d.get("default_text") or {}),
            report=d.get("report") or {},
        )


def save_policy(model_dir: str | Path, policy: Policy) -> Path:
    from neko.io import atomic_write_json

    return atomic_write_json(Path(model_dir) / POLICY_FILE, policy.to_dict())


def load_policy(model_dir: str | Path) -> Policy | None:
    """The tuned policy saved beside a model; a guard-only file from neko < 0.2 reads as mode
    ``generate`` with that guard; None when the model has neither."""
    path = Path(model_dir) / POLICY_FILE
    legacy = Path(model_dir) / LEGACY_GUARD_FILE
    try:
        if path.exists():
            return Policy.from_dict(json.loads(path.read_text(encoding="utf-8")))
        if legacy.exists():
            d = json.loads(legacy.read_text(encoding="utf-8"))
            default = TaskPolicy("generate", RescoreConfig(), GuardConfig.from_dict(d.get("default", {})))
            tasks = {
                k: replace(default, guard=GuardConfig.from_dict(v))
                for k, v in (d.get("per_task") or {}).items()
            }
            return Policy(tasks, default, default, {"from": LEGACY_GUARD_FILE})
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        bad = path if path.exists() else legacy
        raise ValueError(f"{bad}: unreadable correction policy ({e}); re-run `neko policy tune`") from None
    return None


# --------------------------------------------------------------------------- one row


@dataclass
class RowScores:
    """What a decision needs about one item. Scores are summed log-probs with their token counts
    (EOS included): ``cond`` under the task prompt, ``lm`` under no prompt; None = not computed."""

    hypotheses: list[str]
    cond: list[float] | None = None
    lm: list[float] | None = None
    ntok: list[int] | None = None
    generated: str | None = None
    gen_cond: float | None = None
    gen_lm: float | None = None
    gen_ntok: int | None = None
    gen_mean_logprob: float | None = None


@dataclass(frozen=True)
class Decision:
    text: str
    used: Literal["generated", "rescored", "input"]
    index: int  # chosen hypothesis (0 = the 1-best); -1 = the generated text
    rescored: str | None  # the rescoring's choice, when it was computed
    reasons: list[str]
    features: dict[str, Any] | None

    def to_dict(self, mode: str) -> dict[str, Any]:
        return {
            "mode": mode,
            "used": self.used,
            "index": self.index,
            "reasons": self.reasons,
            "features": self.features,
        }


def _rescored_index(policy: TaskPolicy, row: RowScores) -> int | None:
    if len(row.hypotheses) < 2 or row.cond is None or row.lm is None or row.ntok is None:
        return None
    return policy.rescore.choose(row.cond, row.lm, row.ntok)


def _margin(policy: TaskPolicy, row: RowScores, best: int) -> float | None:
    """How much higher the generated text scores than the rescored choice (None when unscored)."""
    if (
        None in (row.gen_cond, row.gen_lm, row.gen_ntok)
        or row.cond is None
        or row.lm is None
        or row.ntok is None
    ):
        return None
    r = policy.rescore
    gen = r.scores([row.gen_cond], [row.gen_lm], [row.gen_ntok])[0]
    return gen - r.scores([row.cond[best]], [row.lm[best]], [row.ntok[best]])[0]


def decide(policy: TaskPolicy, row: RowScores, mode: str | None = None, guard: bool = True) -> Decision:
    """Apply ``policy`` (or ``mode`` instead of its own) to one row."""
    mode = mode or policy.mode
    idx = _rescored_index(policy, row)
    rescored = row.hypotheses[idx] if idx is not None else None
    fallback = idx or 0
    if mode == "keep" or (mode == "generate" and row.generated is None):
        return Decision(row.hypotheses[0], "input", 0, rescored, [], None)
    if mode == "rescore":
        used = "rescored" if fallback else "input"
        return Decision(row.hypotheses[fallback], used, fallback, rescored, [], None)
    feats = guard_features(
        row.hypotheses, row.generated or "", row.gen_mean_logprob, _margin(policy, row, fallback)
    )
    reasons = policy.guard.reasons(feats) if guard else []
    if reasons:
        used = "rescored" if fallback else "input"
        return Decision(row.hypotheses[fallback], used, fallback, rescored, reasons, asdict(feats))
    return Decision(row.generated or "", "generated", -1, rescored, [], asdict(feats))


# --------------------------------------------------------------------------- tuning


@dataclass
class TuneRow:
    """A dev row with its scores and reference, for :func:`tune_policy`."""

    task: str
    scores: RowScores
    reference: str
    nbest: bool


class _Quality:
    """Per row and candidate (hypotheses..., generated) quality, and the corpus metric of a choice."""

    def __init__(self, rows: list[TuneRow], metric: str, normalizer: str) -> None:
        self.metric = metric
        self.n = len(rows)
        width = max(len(r.scores.hypotheses) for r in rows) + 1
        self.gen_col = width - 1
        texts = [list(r.scores.hypotheses) + [""] * (width - 1 - len(r.scores.hypotheses)) for r in rows]
        for t, r in zip(texts, rows, strict=True):
            t.append(r.scores.generated if r.scores.generated is not None else r.scores.hypotheses[0])
        refs = [r.reference for r in rows]
        if metric == "bleu":
            from neko.metrics.bleu import sentence_bleu_from_stats, sentence_stats

            self.stats = np.stack(
                [sentence_stats(refs, [t[c] for t in texts]) for c in range(width)], axis=1
            )  # (R, C, S)
            self.sent = np.array(
                [sentence_bleu_from_stats(self.stats[:, c]) for c in range(width)]
            ).T  # (R, C)
        else:
            from neko.infer.guard import word_edit_distance
            from neko.metrics.normalizers import get_normalizer

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

    def evaluate(self, choice: np.ndarray) -> tuple[float, int]:
        """(loss: WER errors, or -BLEU; rows made worse than the 1-best) of one candidate per row."""
        rows = np.arange(self.n)
        if self.metric == "bleu":
            from neko.metrics.bleu import bleu_from_stats

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
        out[i, : len(v)] = v
    return out


RESCORE_GRID = {
    "alpha": (0.0, 0.5, 1.0),
    "cond_weight": (0.0, 0.25, 0.5, 0.75, 1.0),
    "rank_weight": (0.0, 0.1, 0.25, 0.5, 1.0, 2.0),
    "margin": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
}


def _rescore_choices(rows: list[TuneRow], cfg: RescoreConfig, arrays: tuple[np.ndarray, ...]) -> np.ndarray:
    cond, lm, ntok, valid = arrays
    s = (cfg.cond_weight * cond + (1 - cfg.cond_weight) * lm) / np.maximum(ntok, 1) ** cfg.alpha
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
        _padded(rows, "cond", np.nan) == _padded(rows, "cond", np.nan),  # valid = not padding
    )
    best = None
    for a, w, lam, m in itertools.product(*RESCORE_GRID.values()):
        cfg = RescoreConfig(a, w, lam, m)
        choice = _rescore_choices(rows, cfg, arrays)
        loss, harm = q.evaluate(choice)
        changed = int((choice != 0).sum())
        # within the harm cap: lowest loss, then fewest changes, then the largest margin and rank prior
        key = (harm > cap, loss if harm <= cap else harm, changed, -m, -lam)
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
    rows: list[TuneRow], q: _Quality, cap: int, fallback: np.ndarray, policy: TaskPolicy
) -> tuple[GuardConfig, np.ndarray, float, int]:
    feats: list[GuardFeatures] = []
    for r, f in zip(rows, fallback, strict=True):
        feats.append(
            guard_features(
                r.scores.hypotheses,
                r.scores.generated or "",
                r.scores.gen_mean_logprob,
                _margin(policy, r.scores, int(f)),
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
        choice = np.where(accept, q.gen_col, fallback)
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
) -> RescoreConfig:
    """The rescoring settings alone (e.g. plain LM rescoring: ``lm`` only), chosen on dev."""
    rows = list(rows)
    if not rows:
        return RescoreConfig()
    q = _Quality(rows, metric, normalizer)
    cap = len(rows) if max_harm_rate is None else int(math.floor(max_harm_rate * len(rows) + 1e-9))
    return _search_rescore(rows, q, cap)[0]


def _tune_rows(
    rows: list[TuneRow], metric: str, max_harm_rate: float | None, normalizer: str, min_gain: float
) -> tuple[TaskPolicy, dict[str, Any]]:
    q = _Quality(rows, metric, normalizer)
    cap = len(rows) if max_harm_rate is None else int(math.floor(max_harm_rate * len(rows) + 1e-9))
    keep_loss, _ = q.evaluate(np.zeros(len(rows), dtype=np.int64))
    rescore, r_choice, r_loss, r_harm = _search_rescore(rows, q, cap)
    has_gen = any(r.scores.generated is not None for r in rows)
    g_loss = g_harm = None
    guard = GuardConfig()
    if has_gen:
        # The guard's margin is measured with the rescoring's score; where there is nothing to
        # rescore (single texts), the score the margin uses is chosen with the guard instead.
        nbest = max(len(r.scores.hypotheses) for r in rows) > 1
        scorers = (
            [rescore]
            if nbest
            else [RescoreConfig(a, w, 0.0, 0.0) for a in (0.0, 1.0) for w in (0.0, 0.5, 1.0)]
        )
        best = None
        for scorer in scorers:
            cfg, _, loss, harm = _search_guard(rows, q, cap, r_choice, TaskPolicy("generate", scorer))
            key = (harm > cap, loss if harm <= cap else harm)
            if best is None or key < best[0]:
                best = (key, scorer, cfg, loss, harm)
        _, scorer, guard, g_loss, g_harm = best
        if not nbest:
            rescore = scorer
    raw_loss, raw_harm = q.evaluate(np.full(len(rows), q.gen_col)) if has_gen else (None, None)
    # A mode must gain min_gain of the 1-best's loss (BLEU: of its BLEU) to replace a simpler one.
    need = min_gain * abs(keep_loss) if metric == "bleu" else max(2.0, min_gain * keep_loss)
    mode, loss, harm = "keep", keep_loss, 0
    if r_harm <= cap and keep_loss - r_loss >= need:
        mode, loss, harm = "rescore", r_loss, r_harm
    if g_loss is not None and g_harm <= cap and loss - g_loss >= need:
        mode, loss, harm = "generate", g_loss, g_harm
    report = {
        "rows": len(rows),
        "metric": metric,
        "keep": round(q.rate(keep_loss), 6),
        "rescore": round(q.rate(r_loss), 6),
        "rescore_harm_rate": round(r_harm / len(rows), 4),
        "generate_raw": None if raw_loss is None else round(q.rate(raw_loss), 6),
        "generate_raw_harm_rate": None if raw_harm is None else round(raw_harm / len(rows), 4),
        "generate_guarded": None if g_loss is None else round(q.rate(g_loss), 6),
        "generate_guarded_harm_rate": None if g_harm is None else round(g_harm / len(rows), 4),
        "chosen": mode,
        "chosen_score": round(q.rate(loss), 6),
        "chosen_harm_rate": round(harm / len(rows), 4),
    }
    return TaskPolicy(mode, rescore, guard), report


def tune_policy(
    rows: Sequence[TuneRow],
    *,
    metrics: dict[str, str],
    max_harm_rate: float | None = 0.1,
    normalizer: str = "whisper",
    min_task_rows: int = 20,
    min_gain: float = 0.02,
) -> Policy:
    """Choose every task's mode and thresholds on dev rows (see the module docstring).

    ``metrics``: task -> ``wer`` or ``bleu``. Tasks with at least ``min_task_rows`` rows get their own
    policy; the defaults are tuned on the pooled WER-task rows of each input kind (N-best, text).
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
                sub, metrics.get(task, "wer"), max_harm_rate, normalizer, min_gain
            )
    defaults: dict[bool, TaskPolicy] = {}
    for nbest in (True, False):
        pool = [r for r in rows if r.nbest == nbest and metrics.get(r.task, "wer") == "wer"]
        if pool:
            defaults[nbest], reports[f"default_{'nbest' if nbest else 'text'}"] = _tune_rows(
                pool, "wer", max_harm_rate, normalizer, min_gain
            )
        else:  # nothing to learn from: the safe choice
            defaults[nbest] = TaskPolicy("keep")
    report = {
        "normalizer": normalizer,
        "max_harm_rate": max_harm_rate,
        "min_gain": min_gain,
        "tasks": reports,
    }
    return Policy(per_task, defaults[True], defaults[False], report)
