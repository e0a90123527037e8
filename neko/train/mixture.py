"""Seeded multi-task training mixture: neko JSONL files -> tokenized (prompt, answer) examples.

Design choices:
- **One prompt builder.** The prompt is ``neko.tasks.build_prompt(example, tokenizer=...)`` (the
  base's chat template when it has one), exactly what inference asks; the answer is
  ``output + eos``. Prompt and answer are tokenized separately (``add_special_tokens=False``, as
  ``neko.infer`` does) so the training boundary equals the generation boundary.
- **Loss on answer tokens only.** ``labels`` is -100 on every prompt token.
- **Truncation is a stated policy, never the answer.** ``cut_nbest`` drops N-best hypotheses from
  the tail (the worst ones; the 1-best stays) until prompt + answer fit, then drops the example;
  ``drop`` drops it at once. Every cut and drop is counted in :class:`MixtureReport`.
- **Weights are copies per epoch.** A pool (file x task) of weight w contributes floor(w) full
  copies plus a seeded random fraction (w - floor(w)) of its examples each epoch, so 1.0 means
  "every example once", 0.5 "a different random half each epoch". Weight = file weight x task weight.
  The epoch order is a pure function of (seed, epoch): resuming rebuilds it exactly.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neko.schema import Example, SchemaError, read_jsonl
from neko.tasks import TaskRegistry, build_prompt, get_task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "TRUNCATION_POLICIES",
    "TokenizedExample",
    "MixtureReport",
    "TaskMixture",
    "tokenize_example",
    "build_mixture",
    "load_examples",
]

TRUNCATION_POLICIES = ("cut_nbest", "drop")


@dataclass
class TokenizedExample:
    """input_ids = prompt + answer + eos; labels = -100 on the prompt, the token itself on the answer."""

    id: str
    task: str
    input_ids: list[int]
    labels: list[int]
    n_prompt: int

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class MixtureReport:
    """What happened to the rows: kept per task, cut/dropped by the truncation policy, invalid, filtered."""

    rows_read: int = 0
    kept: Counter = field(default_factory=Counter)
    cut_nbest: Counter = field(default_factory=Counter)
    dropped_too_long: Counter = field(default_factory=Counter)
    dropped_no_output: Counter = field(default_factory=Counter)
    filtered_task: Counter = field(default_factory=Counter)
    invalid: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (dict(v) if isinstance(v, Counter) else v)
            for k, v in self.__dict__.items()
            if not isinstance(v, Counter) or v
        }

    def summary(self) -> str:
        parts = [
            f"{sum(self.kept.values())} examples kept ({', '.join(f'{t} {n}' for t, n in self.kept.items())})"
        ]
        if self.cut_nbest:
            parts.append(f"{sum(self.cut_nbest.values())} with N-best cut to fit")
        if self.dropped_too_long:
            parts.append(f"{sum(self.dropped_too_long.values())} dropped as too long")
        if self.dropped_no_output:
            parts.append(f"{sum(self.dropped_no_output.values())} dropped without output")
        if self.invalid:
            parts.append(f"{sum(self.invalid.values())} invalid rows skipped ({dict(self.invalid)})")
        return "; ".join(parts)


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_example(
    example: Example,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_seq_len: int,
    truncation: str = "cut_nbest",
    registry: TaskRegistry | None = None,
    use_chat_template: bool = True,
) -> tuple[TokenizedExample | None, str]:
    """(tokenized example or None, outcome) with outcome in {"ok", "cut", "too_long", "no_output"}."""
    if truncation not in TRUNCATION_POLICIES:
        raise ValueError(f"truncation must be one of {TRUNCATION_POLICIES}, got {truncation!r}")
    if example.output is None:
        return None, "no_output"
    eos = tokenizer.eos_token
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; set one so the model learns where answers end")
    answer = _encode(tokenizer, example.output + eos)
    outcome = "ok"
    candidate = example
    while True:
        prompt = _encode(
            tokenizer,
            build_prompt(
                candidate, tokenizer=tokenizer, registry=registry, use_chat_template=use_chat_template
            ),
        )
        if len(prompt) + len(answer) <= max_seq_len:
            break
        if truncation == "drop" or not candidate.is_nbest or len(candidate.hypotheses) <= 1:
            return None, "too_long"
        candidate = Example(**{**candidate.__dict__, "input": candidate.hypotheses[:-1]})
        outcome = "cut"
    ids = prompt + answer
    labels = [-100] * len(prompt) + answer
    return TokenizedExample(example.id, example.task, ids, labels, len(prompt)), outcome


def load_examples(path: str | Path, *, skip_invalid: bool, report: MixtureReport) -> list[Example]:
    """Rows of one neko JSONL file; invalid rows raise the schema's error unless ``skip_invalid``."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: training data file not found (data.train[].path)")
    errors: list[SchemaError] = []
    rows = list(read_jsonl(p, skip_invalid=skip_invalid, errors=errors))
    for e in errors:
        report.invalid[getattr(e, "kind", "invalid-row")] += 1
    report.rows_read += len(rows) + len(errors)
    return rows


@dataclass
class _Pool:
    examples: list[TokenizedExample]
    weight: float


class TaskMixture:
    """Pools of tokenized examples with weights; :meth:`epoch` gives the seeded order of one epoch."""

    def __init__(self, pools: Sequence[tuple[list[TokenizedExample], float]], seed: int = 0):
        self.pools = [_Pool(list(ex), float(w)) for ex, w in pools if ex and w > 0]
        self.seed = seed
        if not self.pools:
            raise ValueError(
                "the training mixture is empty: no examples left after task filters, weights and "
                "truncation (see the mixture report)"
            )

    def tasks(self) -> list[str]:
        seen: dict[str, None] = {}
        for p in self.pools:
            for e in p.examples:
                seen.setdefault(e.task, None)
        return list(seen)

    def epoch_size(self) -> int:
        return sum(
            math.floor(p.weight) * len(p.examples) + round((p.weight % 1) * len(p.examples))
            for p in self.pools
        )

    def epoch(self, epoch: int) -> list[TokenizedExample]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        out: list[TokenizedExample] = []
        for p in self.pools:
            whole, frac = divmod(p.weight, 1.0)
            out += p.examples * int(whole)
            k = round(frac * len(p.examples))
            if k:
                out += rng.sample(p.examples, k)
        rng.shuffle(out)
        return out


def build_mixture(
    sources: Sequence[Any],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_seq_len: int,
    truncation: str = "cut_nbest",
    tasks: Sequence[str] = (),
    task_weights: Mapping[str, float] | None = None,
    skip_invalid: bool = False,
    registry: TaskRegistry | None = None,
    use_chat_template: bool = True,
    seed: int = 0,
) -> tuple[TaskMixture, MixtureReport]:
    """sources: objects with ``path``, ``weight``, ``tasks`` (``neko.train.config.DataSource``).

    Unknown task names (in rows or filters) raise the registry's did-you-mean error.
    """
    report = MixtureReport()
    task_weights = dict(task_weights or {})
    for name in list(tasks) + list(task_weights):
        get_task(name, registry)
    pools: list[tuple[list[TokenizedExample], float]] = []
    for src in sources:
        rows = load_examples(src.path, skip_invalid=skip_invalid, report=report)
        keep = set(src.tasks or []) | set()
        for name in keep:
            get_task(name, registry)
        by_task: dict[str, list[TokenizedExample]] = {}
        for ex in rows:
            if (keep and ex.task not in keep) or (tasks and ex.task not in tasks):
                report.filtered_task[ex.task] += 1
                continue
            get_task(ex.task, registry)
            tok, outcome = tokenize_example(
                ex,
                tokenizer,
                max_seq_len=max_seq_len,
                truncation=truncation,
                registry=registry,
                use_chat_template=use_chat_template,
            )
            if tok is None:
                (report.dropped_no_output if outcome == "no_output" else report.dropped_too_long)[
                    ex.task
                ] += 1
                continue
            if outcome == "cut":
                report.cut_nbest[ex.task] += 1
            report.kept[ex.task] += 1
            by_task.setdefault(ex.task, []).append(tok)
        for task, exs in by_task.items():
            pools.append((exs, float(src.weight) * float(task_weights.get(task, 1.0))))
    return TaskMixture(pools, seed=seed), report
