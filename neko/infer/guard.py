"""No-harm guard: keep the 1-best when a correction looks implausible.

Generative correction can make clean inputs worse (the paper's own SPGISpeech result went
3.09 -> 3.27 WER). The guard is a cheap, explainable filter on three features of each correction:

- ``edit_to_nearest``: word edit distance to the nearest hypothesis, divided by the longer length.
  A correction far from every hypothesis is usually a hallucination, not a fix.
- ``length_ratio``: words in the correction / words in the 1-best (truncation, run-on repetition).
- ``mean_logprob``: mean token log-probability of the correction (model confidence).

A correction failing any threshold is replaced by the 1-best. Thresholds live in
:class:`GuardConfig`; :func:`tune_guard` picks them on dev rows by grid search to minimize corpus WER
subject to an optional harm-rate cap (share of utterances whose WER rises over the 1-best), optionally
per task, and saves them as ``neko_guard.json`` beside the weights.

Prediction rows keep both columns: ``prediction`` (guarded, what a user gets) and
``prediction_unguarded`` (raw model output), plus ``guard`` = {kept_one_best, reasons, features}, so
``neko eval --systems prediction,prediction_unguarded`` reports WER and harm rate with and without it.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from neko.data.schema import clean_nbest

__all__ = [
    "GUARD_FILE",
    "GuardConfig",
    "GuardSet",
    "GuardFeatures",
    "guard_features",
    "word_edit_distance",
    "load_guard",
    "save_guard",
    "tune_guard",
]

GUARD_FILE = "neko_guard.json"
INF = math.inf


@dataclass(frozen=True)
class GuardConfig:
    # Reject when the correction is farther than this from every hypothesis (0 = identical, 1 = disjoint).
    max_edit: float = 0.6
    # Reject when words(correction) / words(1-best) falls outside [min, max].
    min_length_ratio: float = 0.5
    max_length_ratio: float = 2.0
    # Reject when the mean token log-prob is below this; -inf disables (its scale is model-specific).
    min_mean_logprob: float = -INF

    def reasons(self, f: GuardFeatures) -> list[str]:
        """Why this correction is rejected (empty list = accepted)."""
        out = []
        if f.empty:
            out.append("empty correction")
        if f.edit_to_nearest > self.max_edit:
            out.append(f"edit distance {f.edit_to_nearest:.2f} to nearest hypothesis > {self.max_edit:g}")
        if not (self.min_length_ratio <= f.length_ratio <= self.max_length_ratio):
            out.append(
                f"length ratio {f.length_ratio:.2f} outside [{self.min_length_ratio:g}, {self.max_length_ratio:g}]"
            )
        if f.mean_logprob is not None and f.mean_logprob < self.min_mean_logprob:
            out.append(f"mean log-prob {f.mean_logprob:.2f} < {self.min_mean_logprob:g}")
        return out

    def to_dict(self) -> dict[str, Any]:
        # JSON has no infinity: write None for "disabled" bounds.
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GuardConfig:
        defaults = {
            "max_edit": INF,
            "min_length_ratio": 0.0,
            "max_length_ratio": INF,
            "min_mean_logprob": -INF,
        }
        unknown = set(d) - set(defaults)
        if unknown:
            raise ValueError(f"unknown guard threshold(s) {sorted(unknown)}; known: {sorted(defaults)}")
        return cls(**{k: float(defaults[k] if d.get(k) is None else d[k]) for k in defaults if k in d})


@dataclass(frozen=True)
class GuardSet:
    """Thresholds for every task (``default``) with optional per-task overrides."""

    default: GuardConfig = field(default_factory=GuardConfig)
    per_task: dict[str, GuardConfig] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def for_task(self, task: str | None) -> GuardConfig:
        return self.per_task.get(task or "", self.default)

    def apply(self, hypotheses: Sequence[str], correction: str, mean_logprob: float | None, task: str | None):
        """(final text, decision dict). The final text is the 1-best when the correction is rejected."""
        feats = guard_features(hypotheses, correction, mean_logprob)
        reasons = self.for_task(task).reasons(feats)
        one_best = (clean_nbest(hypotheses, dedup=False) or [""])[0]
        decision = {"kept_one_best": bool(reasons), "reasons": reasons, "features": asdict(feats)}
        return (one_best if reasons else correction), decision

    def to_dict(self) -> dict[str, Any]:
        return {
            "default": self.default.to_dict(),
            "per_task": {k: v.to_dict() for k, v in self.per_task.items()},
            "report": self.report,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GuardSet:
        return cls(
            default=GuardConfig.from_dict(d.get("default", {})),
            per_task={k: GuardConfig.from_dict(v) for k, v in (d.get("per_task") or {}).items()},
            report=d.get("report") or {},
        )


@dataclass(frozen=True)
class GuardFeatures:
    edit_to_nearest: float
    length_ratio: float
    mean_logprob: float | None
    empty: bool


def word_edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance over words (substitution = insertion = deletion = 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, wa in enumerate(a, 1):
        cur = [i]
        for j, wb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (wa != wb)))
        prev = cur
    return prev[-1]


def guard_features(hypotheses: Sequence[str], correction: str, mean_logprob: float | None) -> GuardFeatures:
    hyps = clean_nbest(hypotheses, dedup=True) or [""]
    c = correction.split()
    dists = []
    for h in hyps:
        w = h.split()
        dists.append(word_edit_distance(c, w) / max(len(c), len(w), 1))
    ratio = len(c) / max(len(hyps[0].split()), 1)
    return GuardFeatures(min(dists), ratio, mean_logprob, empty=not c)


def load_guard(model_dir: str | Path) -> GuardSet | None:
    """The tuned guard saved beside a model, or None when there is none."""
    path = Path(model_dir) / GUARD_FILE
    if not path.exists():
        return None
    try:
        return GuardSet.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: unreadable guard config ({e}); re-run `neko guard tune`") from None


def save_guard(model_dir: str | Path, guard: GuardSet) -> Path:
    from neko.io import atomic_write_json

    return atomic_write_json(Path(model_dir) / GUARD_FILE, guard.to_dict())


def _normalizer(name: str) -> Callable[[str], str]:
    try:
        from neko.metrics.normalizers import get_normalizer
    except ImportError:  # the metrics area may not have landed; fall back to a basic normalizer
        get_normalizer = None
    if get_normalizer is not None:
        try:
            return get_normalizer(name)
        except (AttributeError, ImportError):
            pass
    import re
    import unicodedata

    def basic(s: str) -> str:
        s = unicodedata.normalize("NFKC", s).lower()
        return " ".join(re.sub(r"[^\w\s']", " ", s).split())

    return basic


def _row_value(row: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if row.get(k) is not None:
            return row[k]
    return None


def _mean_logprob(row: dict[str, Any]) -> float | None:
    for src in (row.get("details") or {}, (row.get("guard") or {}).get("features") or {}):
        v = src.get("mean_logprob")
        if v is not None:
            return float(v)
    return None


def _grid(logprobs: list[float]) -> list[GuardConfig]:
    lp = sorted(logprobs)
    lp_cuts = [-INF] + sorted(
        {lp[int(q * (len(lp) - 1))] for q in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)} if lp else set()
    )
    return [
        GuardConfig(e, lo, hi, m)
        for e, lo, hi, m in itertools.product(
            (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, INF),
            (0.0, 0.3, 0.5, 0.7, 0.8, 0.9),
            (1.1, 1.25, 1.5, 2.0, 3.0, INF),
            lp_cuts,
        )
    ]


def _search(items: list[dict[str, Any]], max_harm_rate: float | None) -> tuple[GuardConfig, dict[str, Any]]:
    import numpy as np

    err_c = np.array([it["err_c"] for it in items], dtype=np.int64)
    err_1 = np.array([it["err_1"] for it in items], dtype=np.int64)
    ref_words = max(sum(it["ref_words"] for it in items), 1)
    feats = [it["features"] for it in items]
    edit = np.array([f.edit_to_nearest for f in feats])
    ratio = np.array([f.length_ratio for f in feats])
    lp = np.array([-INF if f.mean_logprob is None else f.mean_logprob for f in feats])
    has_lp = np.array([f.mean_logprob is not None for f in feats])
    empty = np.array([f.empty for f in feats])
    best = None
    for cfg in _grid([f.mean_logprob for f in feats if f.mean_logprob is not None]):
        accept = (
            ~empty
            & (edit <= cfg.max_edit)
            & (ratio >= cfg.min_length_ratio)
            & (ratio <= cfg.max_length_ratio)
            & (~has_lp | (lp >= cfg.min_mean_logprob))
        )
        chosen = np.where(accept, err_c, err_1)
        errors, harm = int(chosen.sum()), int((chosen > err_1).sum())
        ok = max_harm_rate is None or harm / len(items) <= max_harm_rate
        key = (not ok, errors if ok else harm, harm, int((~accept).sum()))
        if best is None or key < best[0]:
            best = (key, cfg, errors, harm, int((~accept).sum()), ok)
    _, cfg, errors, harm, rejected, ok = best
    report = {
        "rows": len(items),
        "wer_one_best": round(float(err_1.sum()) / ref_words, 6),
        "wer_unguarded": round(float(err_c.sum()) / ref_words, 6),
        "wer_guarded": round(errors / ref_words, 6),
        "harm_rate_unguarded": round(float((err_c > err_1).mean()), 6),
        "harm_rate_guarded": round(harm / len(items), 6),
        "kept_one_best": rejected,
        "harm_constraint_met": bool(ok),
    }
    return cfg, report


def tune_guard(
    rows: Iterable[dict[str, Any]],
    *,
    max_harm_rate: float | None = None,
    normalizer: str = "whisper",
    per_task: bool = True,
    min_task_rows: int = 30,
) -> GuardSet:
    """Pick guard thresholds on dev prediction rows (with ``output`` references).

    Each row needs ``input``, ``output`` and ``prediction_unguarded`` (or ``prediction``); the mean
    log-prob is read from ``details.mean_logprob`` or ``guard.features.mean_logprob`` when present.
    Objective: corpus WER (normalized, errors / reference words) of the guarded output, subject to
    harm rate <= ``max_harm_rate`` when given. Tasks with at least ``min_task_rows`` rows get their
    own thresholds; the default is tuned on all rows.
    """
    norm = _normalizer(normalizer)
    items: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        ref = row.get("output")
        pred = _row_value(row, "prediction_unguarded", "prediction")
        if ref is None or pred is None or row.get("input") is None:
            raise ValueError(
                f"dev row #{i} ({row.get('id')!r}) needs 'input', 'output' and 'prediction_unguarded' "
                "(or 'prediction'); produce it with `neko correct --no-guard` on a dev file with references"
            )
        hyps = row["input"] if isinstance(row["input"], list) else [row["input"]]
        one_best = (clean_nbest(hyps, dedup=False) or [""])[0]
        r = norm(ref).split()
        items.append(
            {
                "task": row.get("task"),
                "features": guard_features(hyps, pred, _mean_logprob(row)),
                "err_c": word_edit_distance(r, norm(pred).split()),
                "err_1": word_edit_distance(r, norm(one_best).split()),
                "ref_words": len(r),
            }
        )
    if not items:
        raise ValueError("no dev rows to tune the guard on")
    default, report = _search(items, max_harm_rate)
    tasks: dict[str, GuardConfig] = {}
    task_reports: dict[str, Any] = {}
    if per_task:
        for t in sorted({it["task"] for it in items if it["task"]}):
            sub = [it for it in items if it["task"] == t]
            if len(sub) >= min_task_rows:
                tasks[t], task_reports[t] = _search(sub, max_harm_rate)
    full_report = {
        "normalizer": normalizer,
        "max_harm_rate": max_harm_rate,
        "all": report,
        "per_task": task_reports,
    }
    return GuardSet(default=default, per_task=tasks, report=full_report)
