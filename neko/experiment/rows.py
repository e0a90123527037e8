"""Which rows every system is scored on: the evaluation plan and seeded subsampling.

Test rows are subsampled per task with a fixed seed (``rows_per_task``; 0 = all), taking the first
rows of a seeded shuffle, so two systems are always scored on the same utterances and a larger
budget only adds rows. On the 2-core CPU, decoding dominates the quick start's evaluation (about 30
new tokens/s for the 8-expert model), which is why the CPU default scores a subset.

Light on purpose: ``neko --help`` reads :class:`EvalPlan`'s defaults.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from neko.schema import Example, read_jsonl

__all__ = [
    "EvalPlan",
    "UNSEEN_TASKS",
    "load_split",
    "subsample",
    "subsample_by",
    "asr_domain",
    "asr_domain_condition",
    "subsample_asr_by",
]

# Tasks kept out of training and evaluated k-shot (the paper's unseen typo-correction task).
UNSEEN_TASKS = ("typo",)


@dataclass(frozen=True)
class EvalPlan:
    """rows_per_task: test rows scored per task (0 = all). fewshot_k: shots for unseen tasks.
    max_new_tokens / batch_size: decoding budget. seed: subsampling and shot selection. dtype: the
    decoding precision, fixed rather than "auto": bf16, which auto picks on CPUs with native bf16,
    changes some outputs, so a CPU table decoded in fp32 is the same on every CPU."""

    rows_per_task: int = 40
    fewshot_k: int = 5
    max_new_tokens: int | None = None  # None: per row, from its input's length
    batch_size: int = 16
    seed: int = 0
    dtype: str = "fp32"


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
    examples: Sequence[Example], counts: dict[str, int], key: Callable[[Example], str], seed: int = 0
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


def asr_domain_condition(e: Example) -> str:
    """An ASR row's recognizer domain and condition (``meta.condition``), e.g.
    ``whisper-tiny.en 0-shot / unseen noise babble``: the strata of the zero-shot file."""
    meta = e.meta if isinstance(e.meta, dict) else {}
    return f"{asr_domain(e)} / {meta.get('condition', '(none)')}"


def subsample_asr_by(
    examples: Sequence[Example],
    rows_per_task: int,
    asr_rows: int,
    key: Callable[[Example], str] = asr_domain,
    seed: int = 0,
) -> list[Example]:
    """ASR rows ``asr_rows`` per stratum of ``key`` (0 = all), so every recognizer domain (or
    condition) is scored whatever its share of the split; every other task ``rows_per_task`` rows
    (:func:`subsample`). ASR rows first, then the other tasks in task order. Each ASR row gets
    ``meta.domain`` (:func:`asr_domain`), which the scoring groups by and ``predictions.jsonl`` keeps."""
    asr = [e for e in examples if e.task == "asr"]
    for e in asr:
        e.meta["domain"] = asr_domain(e)
    other = subsample([e for e in examples if e.task != "asr"], rows_per_task, seed)
    return subsample_by(asr, {key(e): asr_rows for e in asr}, key, seed) + other
