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
  When the row carries the recognizer's own score of each hypothesis (``meta["am_score"]`` or
  ``meta["score"]``, higher = better, :attr:`RowScores.am`), ``am_weight * am(h)`` is added too.
- ``generate``: the model's own correction, accepted only if the no-harm guard passes it
  (:class:`neko.infer.guard.GuardConfig`: edit distance to the nearest hypothesis, length ratio,
  confidence, and how much more the model likes it than the rescored choice); otherwise the
  rescored choice (the 1-best for single-text tasks) is returned.
- ``constrained``: like ``generate`` (same guard, same fallback), but the generation may only use
  tokens of the input hypotheses (and EOS, punctuation): the copy bias at ``inf``. It can combine
  words of several hypotheses; it cannot invent a word no hypothesis has.

Agreement: when the hypotheses of an N-best list (two or more) are identical after the Whisper
English normalizer (they differ only in case or punctuation; common with modern recognizers), the
model's preference among them is not evidence. With ``keep_if_agree`` (the default) such a row
returns its 1-best unchanged (``used="input"``, reason ``"hypotheses agree"``) whatever the mode,
and the Corrector does not run the model on it at all.

:func:`tune_policy` chooses each task's mode and thresholds on dev rows by grid search: fewest errors
(highest BLEU for translation) subject to a cap on the harm rate (share of rows made worse than the
1-best). Modes are tried from the simplest (keep, rescore, constrained, generate); each replaces the
one chosen so far only when it gains at least ``min_gain`` of the 1-best's dev errors over it: gains of a row or two on a small dev set are noise, and a
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
    "GENERATION_MODES",
    "AGREE_REASON",
    "hypotheses_agree",
    "rescore_candidates",
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

Mode = Literal["generate", "rescore", "keep", "constrained"]
MODES: tuple[str, ...] = ("generate", "rescore", "keep", "constrained")
GENERATION_MODES: tuple[str, ...] = ("generate", "constrained")
AGREE_REASON = "hypotheses agree"
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
    # Weight of the recognizer's own score of each hypothesis (RowScores.am), when the row has one.
    am_weight: float = 0.0

    def scores(self, cond: Sequence[float], lm: Sequence[float], ntok: Sequence[int]) -> list[float]:
        """The model's score of each candidate, without the rank prior (nor the recognizer's score)."""
        w = self.cond_weight
        return [
            (w * c + (1 - w) * m) / (max(n, 1) ** self.alpha) for c, m, n in zip(cond, lm, ntok, strict=True)
        ]

    def choose(
        self,
        cond: Sequence[float],
        lm: Sequence[float],
        ntok: Sequence[int],
        am: Sequence[float] | None = None,
        allowed: Sequence[bool] | None = None,
    ) -> int:
        """Index of the chosen hypothesis (0 = the 1-best). ``am``: the recognizer's score of each
        hypothesis (higher = better), added with ``am_weight``. ``allowed``: which hypotheses may be
        chosen at all (:func:`rescore_candidates`; the 1-best always may)."""
        s = self.scores(cond, lm, ntok)
        if am is not None:
            s = [x + self.am_weight * a for x, a in zip(s, am, strict=True)]
        s = [x - self.rank_weight * i for i, x in enumerate(s)]
        if allowed is not None:
            s = [x if ok or i == 0 else -math.inf for i, (x, ok) in enumerate(zip(s, allowed, strict=True))]
        j = int(np.argmax(s))
        return j if s[j] - s[0] > self.margin else 0


@dataclass(frozen=True)
class TaskPolicy:
    mode: Mode = "generate"
    rescore: RescoreConfig = field(default_factory=RescoreConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    # Return the 1-best, without running the model, when the N-best hypotheses agree (module doc).
    keep_if_agree: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "rescore": asdict(self.rescore),
            "guard": self.guard.to_dict(),
            "keep_if_agree": self.keep_if_agree,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskPolicy:
        mode = d.get("mode", "generate")
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        unknown = set(d.get("rescore") or {}) - {f for f in asdict(RescoreConfig())}
        if unknown:
            raise ValueError(f"unknown rescore setting(s) {sorted(unknown)}")
        rescore = RescoreConfig(**{k: float(v) for k, v in (d.get("rescore") or {}).items()})
        agree = d.get("keep_if_agree", True)  # policy files before it: the default
        if not isinstance(agree, bool):
            raise ValueError(f"keep_if_agree must be true or false, got {agree!r}")
        return cls(mode, rescore, GuardConfig.from_dict(d.get("guard") or {}), agree)


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
        # A misspelt key ("per_tasks") was ignored and every task silently fell back to the default
        # (issue 23.6): any key this version does not know is an error.
        unknown = set(d) - {"per_task", "default_nbest", "default_text", "report"}
        if unknown:
            raise ValueError(
                f"unknown top-level key(s) {sorted(unknown)}; known: default_nbest, default_text, per_task, report"
            )
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
    (EOS included): ``cond`` under the task prompt, ``lm`` under no prompt; None = not computed.
    ``am``: the recognizer's own score of each hypothesis (higher = better), None when the row has
    none. ``generated`` / ``gen_*``: the free generation and its scores; ``con_generated`` /
    ``con_*``: the N-best-constrained generation (mode ``constrained``) and its scores."""

    hypotheses: list[str]
    cond: list[float] | None = None
    lm: list[float] | None = None
    ntok: list[int] | None = None
    generated: str | None = None
    gen_cond: float | None = None
    gen_lm: float | None = None
    gen_ntok: int | None = None
    gen_mean_logprob: float | None = None
    am: list[float] | None = None
    con_generated: str | None = None
    con_cond: float | None = None
    con_lm: float | None = None
    con_ntok: int | None = None
    con_mean_logprob: float | None = None

    def __post_init__(self) -> None:
        if self.am is not None and len(self.am) != len(self.hypotheses):
            self.am = None  # not aligned with the hypotheses: unusable

    def generation(
        self, mode: str
    ) -> tuple[str | None, float | None, float | None, int | None, float | None]:
        """(text, cond, lm, ntok, mean log-prob) of the generation ``mode`` uses."""
        if mode == "constrained":
            return self.con_generated, self.con_cond, self.con_lm, self.con_ntok, self.con_mean_logprob
        return self.generated, self.gen_cond, self.gen_lm, self.gen_ntok, self.gen_mean_logprob


def hypotheses_agree(hypotheses: Sequence[str]) -> bool:
    """True when there are at least two hypotheses and all are identical after the Whisper English
    normalizer WER is scored with (they differ at most in case, punctuation or spelling variants)."""
    if len(hypotheses) < 2:
        return False
    from neko.metrics.normalizers import DEFAULT_NORMALIZER, get_normalizer

    norm = get_normalizer(DEFAULT_NORMALIZER)
    first = norm(hypotheses[0])
    return all(norm(h) == first for h in hypotheses[1:])


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


def rescore_candidates(hypotheses: Sequence[str]) -> list[bool]:
    """Which hypotheses rescoring may choose: those whose word count is within the guard's default
    length-ratio bounds of the 1-best's (the 1-best always). Whisper's beam holds hallucinated short
    outputs ("thank you", "bye": 50 of the 3,564 HyPoradise ATIS train lists have a hypothesis under
    half the 1-best's length), and a length-normalised LM score can prefer them; a generated text
    is held to the same bounds by the guard."""
    g = GuardConfig()
    n0 = max(len(hypotheses[0].split()), 1) if hypotheses else 1
    return [
        i == 0 or g.min_length_ratio <= len(h.split()) / n0 <= g.max_length_ratio
        for i, h in enumerate(hypotheses)
    ]


def _rescored_index(policy: TaskPolicy, row: RowScores) -> int | None:
    if len(row.hypotheses) < 2 or row.cond is None or row.lm is None or row.ntok is None:
        return None
    return policy.rescore.choose(row.cond, row.lm, row.ntok, row.am, rescore_candidates(row.hypotheses))


def _margin(policy: TaskPolicy, row: RowScores, best: int, mode: str = "generate") -> float | None:
    """How much higher the generated text (of ``mode``) scores than the rescored choice (None when
    unscored). The recognizer's score is left out: the generated text has none."""
    _, g_cond, g_lm, g_ntok, _ = row.generation(mode)
    if None in (g_cond, g_lm, g_ntok) or row.cond is None or row.lm is None or row.ntok is None:
        return None
    r = policy.rescore
    gen = r.scores([g_cond], [g_lm], [g_ntok])[0]
    return gen - r.scores([row.cond[best]], [row.lm[best]], [row.ntok[best]])[0]


def decide(policy: TaskPolicy, row: RowScores, mode: str | None = None, guard: bool = True) -> Decision:
    """Apply ``policy`` (or ``mode`` instead of its own) to one row."""
    mode = mode or policy.mode
    idx = _rescored_index(policy, row)
    rescored = row.hypotheses[idx] if idx is not None else None
    if policy.keep_if_agree and hypotheses_agree(row.hypotheses):
        return Decision(row.hypotheses[0], "input", 0, rescored, [AGREE_REASON], None)
    fallback = idx or 0
    text, _, _, _, mean_lp = row.generation(mode)
    if mode == "keep" or (mode in GENERATION_MODES and text is None):
        return Decision(row.hypotheses[0], "input", 0, rescored, [], None)
    if mode == "rescore":
        used = "rescored" if fallback else "input"
        return Decision(row.hypotheses[fallback], used, fallback, rescored, [], None)
    feats = guard_features(row.hypotheses, text or "", mean_lp, _margin(policy, row, fallback, mode))
    reasons = policy.guard.reasons(feats) if guard else []
    if reasons:
        used = "rescored" if fallback else "input"
        return Decision(row.hypotheses[fallback], used, fallback, rescored, reasons, asdict(feats))
    return Decision(text or "", "generated", -1, rescored, [], asdict(feats))


# --------------------------------------------------------------------------- tuning


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

    def evaluate(self, choice: np.ndarray, raw: bool = False) -> tuple[float, int]:
        """(loss: WER errors, or -BLEU; rows made worse than the 1-best) of one candidate per row
        (``raw``: as given, without keeping the rows whose hypotheses agree)."""
        rows = np.arange(self.n)
        if not raw:
            choice = np.where(self.agree, 0, choice)
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
            guard_features(r.scores.hypotheses, text or "", mean_lp, _margin(policy, r.scores, int(f), mode))
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

    def rate(x: float | None) -> float | None:
        return None if x is None else round(q.rate(x), 6)

    def harm_rate(x: int | None) -> float | None:
        return None if x is None else round(x / len(rows), 4)

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
    report = {
        "rows": len(rows),
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
    return TaskPolicy(mode, rescore, guard, keep_if_agree), report


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
