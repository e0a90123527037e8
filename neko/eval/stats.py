"""``dataset_stats``: what a data file holds and how hard it is, per task, as a plain JSON-able dict.

Used by ``neko data stats`` and to check the shipped benchmark's ``manifest.json``, so the keys
are stable and always present (``None`` where a number does not apply). See :func:`dataset_stats`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from neko.eval.baselines import one_best
from neko.eval.scoring import DEFAULT_SCORING, get_scoring, resolve_normalizer
from neko.metrics._parallel import gc_paused
from neko.metrics.bleu import DEFAULT_TOKENIZE, corpus_bleu
from neko.metrics.normalizers import Normalizer, get_normalizer, precompute
from neko.metrics.oracles import compositional_oracle, nbest_oracle_bleu, nbest_oracle_wer
from neko.metrics.wer import corpus_wer
from neko.schema import Example, example_from_dict
from neko.tasks import REGISTRY, TaskRegistry

__all__ = ["dataset_stats", "print_stats"]


def _metric_of(task: str, registry: TaskRegistry | None) -> str:
    reg = registry or REGISTRY
    return reg.get(task).metric if task in reg else "wer"


def dataset_stats(
    examples: Iterable[Example | dict],
    *,
    normalizer: str | None = None,
    scoring: str = DEFAULT_SCORING,
    bleu_tokenize: str = DEFAULT_TOKENIZE,
    registry: TaskRegistry | None = None,
) -> dict[str, Any]:
    """Per-task summary of a data set. Returns::

        {"scoring": str, "normalizer": str, "bleu_tokenize": str, "rows": int,
         "tasks": {task (sorted): {
             "rows": int,                      # rows of this task
             "metric": "wer" | "bleu",         # from the task registry ("wer" for unknown tasks)
             "with_reference": int,            # rows with an "output"; metrics use only these
             "nbest_size": {"min": int, "mean": float, "max": int} | None,   # None: no list inputs
             "one_best": {...} | None,         # the uncorrected baseline (hypothesis index 0)
             "oracle_nbest": {...} | None,     # best hypothesis per row (N-best inputs only)
             "oracle_compositional": {...} | None,  # N-best inputs only
         }}}

    Metric dicts: WER tasks ``{"wer", "cer", "mean_utt_wer", "n_scored", "n_dropped_empty_ref"}``
    (fractions, after ``normalizer``; empty references dropped and counted); BLEU tasks
    ``{"bleu", "n_scored", "signature"}`` (0-100, sacrebleu). ``oracle_nbest`` has the task's
    metric (``wer`` + ``cer`` + ``mean_utt_wer``, or ``bleu``) and ``n_scored``. ``scoring``
    (:mod:`neko.eval.scoring`) only picks the normalizer (``none`` for ``hyporadise``, else
    ``normalizer``, default ``whisper``) and which WER ``print_stats`` shows; ``oracle_compositional`` is
    ``{"wer", "n_scored"}`` where ``wer`` is the share of reference words (after ``normalizer``)
    that appear in no hypothesis. Metric dicts are ``None`` when no row of the task has a reference.
    """
    norm = get_normalizer(resolve_normalizer(scoring, normalizer))
    with gc_paused():
        out = _dataset_stats(examples, norm, bleu_tokenize, registry)
    return {"scoring": get_scoring(scoring).name, **out}


def _dataset_stats(
    examples: Iterable[Example | dict], norm: Normalizer, bleu_tokenize: str, registry: TaskRegistry | None
) -> dict[str, Any]:
    exs = [e if isinstance(e, Example) else example_from_dict(e, line=i + 1) for i, e in enumerate(examples)]
    # every distinct reference and hypothesis normalized once (1-best, both oracles reuse them)
    norm = precompute(norm, [t for e in exs for t in (e.output, *e.hypotheses)])
    by_task: dict[str, list[Example]] = {}
    for e in exs:
        by_task.setdefault(e.task, []).append(e)
    out: dict[str, Any] = {
        "normalizer": norm.name,
        "bleu_tokenize": bleu_tokenize,
        "rows": len(exs),
        "tasks": {},
    }
    for task in sorted(by_task):
        rows = by_task[task]
        metric = _metric_of(task, registry)
        lists = [e for e in rows if e.is_nbest]
        sizes = [len(e.hypotheses) for e in lists]
        ref_rows = [e for e in rows if e.output is not None]
        entry: dict[str, Any] = {
            "rows": len(rows),
            "metric": metric,
            "with_reference": len(ref_rows),
            "nbest_size": {"min": min(sizes), "mean": sum(sizes) / len(sizes), "max": max(sizes)}
            if sizes
            else None,
            "one_best": None,
            "oracle_nbest": None,
            "oracle_compositional": None,
        }
        if ref_rows:
            refs = [e.output for e in ref_rows]
            base = [one_best(e) for e in ref_rows]
            nbests = [e.hypotheses for e in ref_rows]
            has_lists = any(e.is_nbest for e in ref_rows)
            if metric == "wer":
                r = _wer_or_none(refs, base, norm)
                entry["one_best"] = r
                if has_lists and r is not None:
                    o = nbest_oracle_wer(refs, nbests, norm)
                    entry["oracle_nbest"] = {
                        "wer": o.wer,
                        "cer": o.cer,
                        "mean_utt_wer": o.mean_utt_wer,
                        "n_scored": o.n,
                    }
            else:
                b = corpus_bleu(refs, base, bleu_tokenize, sentence_scores=False)
                entry["one_best"] = {"bleu": b.score, "n_scored": b.n, "signature": b.signature}
                if has_lists:
                    ob, _ = nbest_oracle_bleu(refs, nbests, bleu_tokenize)
                    entry["oracle_nbest"] = {"bleu": ob.score, "n_scored": ob.n}
            if has_lists and (metric != "wer" or entry["one_best"] is not None):
                try:
                    c = compositional_oracle(refs, nbests, norm)
                    entry["oracle_compositional"] = {"wer": c.wer, "n_scored": c.n}
                except ValueError:  # every reference empty after normalization
                    pass
        out["tasks"][task] = entry
    return out


def _wer_or_none(refs, hyps, norm) -> dict[str, Any] | None:
    try:
        r = corpus_wer(refs, hyps, norm)
    except ValueError:  # every reference empty after normalization
        return None
    return {
        "wer": r.wer,
        "cer": r.cer,
        "mean_utt_wer": r.mean_utt_wer,
        "n_scored": r.n,
        "n_dropped_empty_ref": r.n_dropped_empty_ref,
    }


def print_stats(stats: dict[str, Any], console=None) -> None:
    """The stats as one rich table (WER/CER in %, BLEU 0-100)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    scoring = get_scoring(stats.get("scoring", DEFAULT_SCORING))
    title = f"{stats['rows']} rows; scoring: {scoring.name}; normalizer: {stats['normalizer']}"
    table = Table(title=title, title_justify="left")
    for col in (
        "task",
        "rows",
        "refs",
        "N-best min/mean/max",
        "metric",
        "1-best",
        "oracle N-best",
        "oracle comp.",
    ):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right", no_wrap=True)

    def fmt(d: dict | None, metric: str) -> str:
        if d is None:
            return "-"
        return f"{d['bleu']:.2f}" if "bleu" in d else f"{100 * d[scoring.headline]:.2f}"

    for task, t in stats["tasks"].items():
        nb = t["nbest_size"]
        size = f"{nb['min']}/{nb['mean']:.2f}/{nb['max']}" if nb else "-"
        metric = (
            "BLEU" if t["metric"] == "bleu" else ("WER %" if scoring.headline == "wer" else "utt-mean WER %")
        )
        table.add_row(
            task,
            str(t["rows"]),
            str(t["with_reference"]),
            size,
            metric,
            fmt(t["one_best"], t["metric"]),
            fmt(t["oracle_nbest"], t["metric"]),
            "-" if t["oracle_compositional"] is None else f"{100 * t['oracle_compositional']['wer']:.2f}%",
        )
    console.print(table)
