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

The modes and thresholds are chosen per task on dev data (:mod:`neko.infer.tuning`) and saved beside
the weights as ``neko_policy.json``; this module is what they do at inference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from neko.infer.guard import GuardConfig, guard_features
from neko.io import atomic_write_json
from neko.metrics.normalizers import DEFAULT_NORMALIZER, get_normalizer

if TYPE_CHECKING:
    from neko.infer.options import CorrectionOptions

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
    "generation_margin",
    "needs_scores",
    "plan",
    "scores_needed",
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
    (EOS included): ``cond`` under the task prompt, ``lm`` under no prompt; None = not computed
    (also when the policy gives it weight 0 and nothing else asked for it: :func:`scores_needed`).
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


def scores_needed(rescore: RescoreConfig) -> tuple[bool, bool]:
    """(cond, lm): which scores ``rescore``'s weights use. A score weighted 0 changes no decision
    (``0 * x + m`` is exactly ``m``), so the Corrector skips its forward passes when nothing else
    (details, all outputs) asks for it; :func:`_weighted` stands zeros in for it."""
    return rescore.cond_weight != 0, rescore.cond_weight != 1


def _weighted(rescore: RescoreConfig, cond: list[float] | None, lm: list[float] | None, n: int):
    """(cond, lm) for ``rescore``'s weights, zeros standing in for a score weighted 0 that was not
    computed; None when a score the weights use is missing."""
    use_cond, use_lm = scores_needed(rescore)
    cond = cond if cond is not None or use_cond else [0.0] * n
    lm = lm if lm is not None or use_lm else [0.0] * n
    return None if cond is None or lm is None else (cond, lm)


def _rescored_index(policy: TaskPolicy, row: RowScores) -> int | None:
    if len(row.hypotheses) < 2 or row.ntok is None:
        return None
    pair = _weighted(policy.rescore, row.cond, row.lm, len(row.hypotheses))
    if pair is None:
        return None
    return policy.rescore.choose(pair[0], pair[1], row.ntok, row.am, rescore_candidates(row.hypotheses))


def generation_margin(policy: TaskPolicy, row: RowScores, best: int, mode: str = "generate") -> float | None:
    """How much higher the generated text (of ``mode``) scores than the rescored choice (None when
    unscored). The recognizer's score is left out: the generated text has none."""
    _, g_cond, g_lm, g_ntok, _ = row.generation(mode)
    r = policy.rescore
    gen = _weighted(r, None if g_cond is None else [g_cond], None if g_lm is None else [g_lm], 1)
    hyp = _weighted(r, row.cond, row.lm, len(row.hypotheses))
    if gen is None or hyp is None or g_ntok is None or row.ntok is None:
        return None
    return r.scores(*gen, [g_ntok])[0] - r.scores([hyp[0][best]], [hyp[1][best]], [row.ntok[best]])[0]


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
    feats = guard_features(
        row.hypotheses, text or "", mean_lp, generation_margin(policy, row, fallback, mode)
    )
    reasons = policy.guard.reasons(feats) if guard else []
    if reasons:
        used = "rescored" if fallback else "input"
        return Decision(row.hypotheses[fallback], used, fallback, rescored, reasons, asdict(feats))
    return Decision(text or "", "generated", -1, rescored, [], asdict(feats))


def plan(
    policy: Policy | None, options: CorrectionOptions, task: str | None, nbest: bool, has_hypotheses: bool
) -> tuple[TaskPolicy, str, bool]:
    """(task policy, mode, guard on) for one item under the options: ``mode="auto"`` follows the saved
    ``policy`` (generation when the model has none); ``guard="auto"`` is on when a policy was tuned;
    ``keep_if_agree`` None follows the policy (on by default). An item without hypotheses (a raw
    prompt body) is generated: there is nothing to keep or rescore."""
    tuned = policy is not None
    tp = policy.for_task(task, nbest) if tuned else TaskPolicy("generate")
    if options.keep_if_agree is not None:
        tp = replace(tp, keep_if_agree=options.keep_if_agree)
    mode = options.mode if options.mode != "auto" else tp.mode
    if not has_hypotheses:
        mode = "generate"
    guard = options.guard == "on" or (options.guard == "auto" and tuned)
    return tp, mode, guard


def needs_scores(policy: TaskPolicy, mode: str, guard: bool, row: RowScores) -> bool:
    """Whether deciding this row needs candidate scores (they cost a forward pass over the prompt)."""
    if mode == "keep":
        return False
    several = len(set(row.hypotheses)) > 1
    if mode == "rescore":
        return several
    # generate / constrained: only the guard uses scores (its margin test, and the rescored
    # fallback it returns)
    text = row.generation(mode)[0]
    return guard and text is not None and (several or policy.guard.min_margin > float("-inf"))
