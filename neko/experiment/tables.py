"""The comparison's tables, each the analog of one table of the NeKo paper (``neko experiment``).

Every cell comes from a report of :func:`neko.experiment.evaluate.score_system_outputs` computed in
the same run. WER/CER in %, BLEU 0-100; "Δ [95% CI]" is the paired bootstrap difference against the
uncorrected 1-best on the same rows (WER in points, negative = fewer errors; BLEU positive = better).

Paper table -> ours:
- Table 2 (Open ASR Leaderboard: dense FFT, MoE FFT, LoRA, BTX, NeKo) and Table 3 (ST/MT, the same
  systems): every trained system on the in-domain test rows of all five tasks
  (:func:`neko.experiment.report.results_rows`, with harm rates and Δ vs the 1-best).
- Table 1 (zero-shot ASR on unseen domains): :func:`zeroshot_asr_table`, the held-out flite voices.
- Table 4 (zero-shot MT on language pairs never trained): :func:`zeroshot_mt_table`, the held-out
  pivot languages.
- Table 5 (NeKo vs a model fine-tuned on each task alone): :func:`single_task_table`.
- Table 6 (the unseen typo task, 0-shot and 5-shot): :func:`typo_table`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from neko.experiment.report import BASELINE_LABELS, COLUMNS, to_markdown

__all__ = [
    "budget_table",
    "zeroshot_asr_table",
    "zeroshot_mt_table",
    "single_task_table",
    "typo_table",
]


def _val(task_report: dict | None, system: str, metric: str) -> str:
    s = (task_report or {}).get("systems", {}).get(system)
    if not s or s.get(metric) is None:
        return "–"
    return f"{s[metric]:.2f}" if metric == "bleu" else f"{100 * s[metric]:.2f}"


def _delta(task_report: dict | None, system: str, metric: str) -> str:
    pr = ((task_report or {}).get("vs_1best", {}).get(system) or {}).get("paired")
    if not pr:
        return "–"
    scale = 1.0 if metric == "bleu" else 100.0
    return f"{scale * pr['delta']:+.2f} [{scale * pr['low']:+.2f}, {scale * pr['high']:+.2f}]"


def _oracle(task_report: dict | None, kind: str, metric: str) -> str:
    o = ((task_report or {}).get("oracles") or {}).get(kind)
    if not o:
        return "–"
    if kind == "compositional":
        return f"{100 * o['wer']:.2f}% missing" if metric == "bleu" else f"{100 * o['wer']:.2f}"
    return f"{o[metric]:.2f}" if metric == "bleu" else f"{100 * o[metric]:.2f}"


def budget_table(
    budgets: dict[str, dict[str, Any]], labels: dict[str, str]
) -> tuple[list[str], list[list[str]]]:
    """What each system trained: optimizer steps x packed rows, real training tokens, its runs' time
    (loading and saving included) and the training loop's tokens/s on this machine."""
    header = ["system", "what trains", "optimizer steps x rows", "training tokens", "train s", "tokens/s"]
    rows = [
        [
            labels.get(name, name),
            b["trains"],
            b["steps"],
            f"{b['tokens']:,}",
            f"{b['seconds']:.0f}",
            f"{b.get('tokens_per_s', 0):.0f}",
        ]
        for name, b in budgets.items()
    ]
    return header, rows


def zeroshot_asr_table(
    report: dict[str, Any], systems: Sequence[str], labels: dict[str, str]
) -> tuple[list[str], list[list[str]]]:
    """Table 1 analog: WER % per system and held-out condition (the paper's test sets are our
    held-out voices), with the relative change vs the 1-best, beside the oracles."""
    asr = report.get("tasks", {}).get("asr")
    if not asr:
        return [], []
    labels = {**BASELINE_LABELS, **labels}
    parts = [(f"voice {g}", t) for g, t in sorted((asr.get("groups") or {}).items()) if "systems" in t]
    parts.append(("all held-out rows", asr))
    header = ["system"] + [f"{name} ({t.get('n_scored', '?')} rows)" for name, t in parts]

    def cell(t: dict, s: str) -> str:
        base, w = t["systems"]["1best"]["wer"], t["systems"].get(s, {}).get("wer")
        if w is None:
            return "–"
        return (
            f"{100 * w:.2f}"
            if s == "1best" or not base
            else f"{100 * w:.2f} ({100 * (w - base) / base:+.1f}%)"
        )

    rows = [[labels.get(s, s)] + [cell(t, s) for _, t in parts] for s in ["1best", *systems]]
    rows.append(["N-best oracle"] + [_oracle(t, "nbest", "wer") for _, t in parts])
    rows.append(["compositional oracle"] + [_oracle(t, "compositional", "wer") for _, t in parts])
    return header, rows


def zeroshot_mt_table(
    report: dict[str, Any], systems: Sequence[str], labels: dict[str, str]
) -> tuple[list[str], list[list[str]]]:
    """Table 4 analog: BLEU on MT rows through pivot languages no training row used."""
    mt = report.get("tasks", {}).get("mt")
    if not mt:
        return [], []
    labels = {**BASELINE_LABELS, **labels}
    header = ["system", "BLEU", "Δ vs 1-best [95% CI]"]
    rows = [
        [labels.get(n, n), _val(mt, n, "bleu"), _delta(mt, n, "bleu") if n != "1best" else ""]
        for n in ["1best", *systems]
    ]
    rows.append(["N-best oracle", _oracle(mt, "nbest", "bleu"), ""])
    return header, rows


def single_task_table(
    report: dict[str, Any], systems: Sequence[str], labels: dict[str, str]
) -> tuple[list[str], list[list[str]]]:
    """Table 5 analog: per task, the uncorrected input, the single-task model (its own task only) and
    the multi-task systems, metric per task."""
    labels = {**BASELINE_LABELS, **labels}
    tasks = report.get("tasks", {})
    cols = [c for c in COLUMNS if c[1] in tasks and c[2] != "cer"]
    header = ["system"] + [title for title, _, _ in cols]
    rows = [[labels.get(n, n)] + [_val(tasks.get(t), n, m) for _, t, m in cols] for n in ["1best", *systems]]
    return header, rows


def typo_table(
    report: dict[str, Any] | None, systems: Sequence[str], labels: dict[str, str]
) -> tuple[list[str], list[list[str]]]:
    """Table 6 analog: the unseen typo task, 0-shot and 5-shot (shots from the dev split), WER %."""
    t = (report or {}).get("tasks", {}).get("typo")
    if not t:
        return [], []
    header = ["system", "WER 0-shot", "Δ 0-shot [95% CI]", "WER 5-shot", "Δ 5-shot [95% CI]"]
    base = _val(t, "1best", "wer")
    rows = [[BASELINE_LABELS["1best"], base, "", base, ""]]
    for s in systems:
        z, f = f"{s}@0shot", f"{s}@5shot"
        rows.append(
            [labels.get(s, s), _val(t, z, "wer"), _delta(t, z, "wer"), _val(t, f, "wer"), _delta(t, f, "wer")]
        )
    return header, rows


def markdown(table: tuple[list[str], list[list[str]]]) -> str:
    """A table as markdown ('' for an empty one)."""
    header, rows = table
    return to_markdown(header, rows) if header else ""
