"""The results table of the quick start and the comparison, rendered from ``neko eval`` reports.

One table, systems as rows and task metrics as columns, so a reader sees the floor (uncorrected
1-best), the non-neural baseline (ROVER vote), the upper bounds (N-best and compositional oracles)
and the trained systems side by side. Every number comes from a report dict produced in the same
run; :mod:`neko.experiment.publish` pastes the rendered tables into the README, so the README is
never hand-edited. WER/CER are percentages; BLEU is 0-100.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = [
    "COLUMNS",
    "BASELINE_LABELS",
    "results_rows",
    "to_markdown",
    "compact_summary",
    "print_table",
    "average_summary",
    "averages_table",
    "pairs_table",
    "groups_table",
    "compact_groups",
]

# (column title, task, metric key); typo columns come from the k-shot report.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("ASR WER", "asr", "wer"),
    ("OCR WER", "ocr", "wer"),
    ("OCR CER", "ocr", "cer"),
    ("MT BLEU", "mt", "bleu"),
    ("TEC-grammar WER", "tec-grammar", "wer"),
    ("TEC-coherence WER", "tec-coherence", "wer"),
)
BASELINE_LABELS = {"1best": "uncorrected 1-best", "rover": "ROVER vote"}


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if metric == "bleu" else f"{100 * value:.2f}"


def _cell(task_report: dict | None, system: str, metric: str) -> str:
    if not task_report:
        return "–"
    s = task_report["systems"].get(system)
    if s is None:
        if system.startswith("oracle:"):
            kind = system.split(":", 1)[1]
            o = (task_report.get("oracles") or {}).get(kind)
            if not o:
                return "–"
            if metric == "bleu":
                return _fmt(o.get("bleu"), metric) if kind == "nbest" else f"{100 * o['wer']:.2f}% missing"
            return _fmt(o.get(metric), metric) if metric in o else "–"
        return "–"
    return _fmt(s.get(metric), metric)


def results_rows(
    report: dict[str, Any],
    systems: Sequence[str],
    labels: dict[str, str] | None = None,
    typo: dict[str, Any] | None = None,
    typo_systems: dict[str, tuple[str, str]] | None = None,
    columns: Sequence[tuple[str, str, str]] = COLUMNS,
) -> tuple[list[str], list[list[str]]]:
    """(header, rows). ``typo_systems``: system -> (0-shot name, 5-shot name) in the typo report;
    ``columns``: (title, task key in the report, metric), those of tasks the report has."""
    labels = {**BASELINE_LABELS, **(labels or {})}
    tasks = report.get("tasks", {})
    cols = [c for c in columns if c[1] in tasks]
    header = ["system"] + [c[0] for c in cols]
    if typo:
        header += ["typo WER 0-shot", "typo WER 5-shot"]
    order = ["1best", "rover", "oracle:nbest", "oracle:compositional", *systems]
    names = {"oracle:nbest": "N-best oracle", "oracle:compositional": "compositional oracle"}
    rows = []
    typo_t = (typo or {}).get("tasks", {}).get("typo")
    for sysname in order:
        row = [labels.get(sysname, names.get(sysname, sysname))]
        row += [_cell(tasks.get(task), sysname, metric) for _, task, metric in cols]
        if typo:
            if sysname == "1best":
                row += [_cell(typo_t, "1best", "wer")] * 2
            elif typo_systems and sysname in typo_systems:
                z, f = typo_systems[sysname]
                row += [_cell(typo_t, z, "wer"), _cell(typo_t, f, "wer")]
            else:
                row += ["–", "–"]
        rows.append(row)
    # Harm rate and the paired CI of the change vs the 1-best, for each trained system.
    for sysname in systems:
        harm_row = [f"{labels.get(sysname, sysname)}: harm rate %"]
        delta_row = [f"{labels.get(sysname, sysname)}: Δ vs 1-best [95% CI]"]
        for _, task, metric in cols:
            cmp = (tasks.get(task) or {}).get("vs_1best", {}).get(sysname) or {}
            harm, pr = cmp.get("harm"), cmp.get("paired")
            scale = 1.0 if metric == "bleu" else 100.0
            harm_row.append(f"{100 * harm['harm_rate']:.1f}" if harm and metric != "cer" else "")
            delta_row.append(_delta_cell(pr, scale) if metric != "cer" else "")
        if typo:
            harm_row += ["", ""]
            delta_row += ["", ""]
        rows += [harm_row, delta_row]
    return header, rows


def _delta_cell(pr: dict[str, Any] | None, scale: float) -> str:
    """A paired-bootstrap difference as "delta [low, high]" in display units ("" when absent)."""
    if not pr:
        return ""
    return f"{scale * pr['delta']:+.2f} [{scale * pr['low']:+.2f}, {scale * pr['high']:+.2f}]"


def compact_summary(
    report: dict[str, Any], typo: dict[str, Any] | None = None, labels: dict[str, str] | None = None
) -> list[str]:
    """The quick start's console view, one line per task, under 80 columns (a log file or a narrow
    terminal keeps it readable; the full table goes to results.md): the 1-best, the LM rescoring
    baseline, NeKo raw / rescoring / final, the final system's change vs the 1-best with its paired
    bootstrap 95% CI, and its harm rate."""

    def val(t: dict | None, name: str, metric: str) -> str:
        s = (t or {}).get("systems", {}).get(name)
        if not s or s.get(metric) is None:
            return "–"
        return f"{s[metric]:.2f}" if metric == "bleu" else f"{100 * s[metric]:.2f}"

    def change(t: dict | None, name: str, metric: str) -> tuple[str, str]:
        cmp = (t or {}).get("vs_1best", {}).get(name) or {}
        pr, harm = cmp.get("paired"), cmp.get("harm")
        scale = 1.0 if metric == "bleu" else 100.0
        ci = f"{scale * pr['delta']:+.2f} [{scale * pr['low']:+.2f},{scale * pr['high']:+.2f}]" if pr else "–"
        return ci, (f"{100 * harm['harm_rate']:.1f}%" if harm else "–")

    # 18 + 5 x 6 + 2 + 22 + 6 = 78 columns: "tec-coherence WER" is the longest label.
    head = f"{'task':<18}{'1-best':>6}{'LM':>6}{'raw':>6}{'resc.':>6}{'final':>6}  {'final Δ [95% CI]':<22}{'harm':>6}"
    lines = [head, "-" * len(head)]
    tasks = report.get("tasks", {})
    for _, task, metric in COLUMNS:
        if task not in tasks or metric == "cer":
            continue
        t = tasks[task]
        ci, harm = change(t, "neko", metric)
        cells = [val(t, n, metric) for n in ("1best", "lm_base", "neko_raw", "neko_rescore", "neko")]
        lines.append(
            f"{task + ' ' + metric.upper():<18}" + "".join(f"{c:>6}" for c in cells) + f"  {ci:<22}{harm:>6}"
        )
    typo_t = (typo or {}).get("tasks", {}).get("typo")
    for shots in ("0shot", "5shot"):
        if not typo_t or f"neko_{shots}" not in typo_t["systems"]:
            continue
        ci, harm = change(typo_t, f"neko_{shots}", "wer")
        cells = [
            val(typo_t, "1best", "wer"),
            "–",
            val(typo_t, f"neko_raw_{shots}", "wer"),
            "–",
            val(typo_t, f"neko_{shots}", "wer"),
        ]
        lines.append(
            f"{'typo WER ' + shots[0] + '-shot':<18}"
            + "".join(f"{c:>6}" for c in cells)
            + f"  {ci:<22}{harm:>6}"
        )
    names = labels or {}
    legend = "; ".join(
        f"{short}: {names.get(n, n)}"
        for short, n in (("LM", "lm_base"), ("raw", "neko_raw"), ("resc.", "neko_rescore"), ("final", "neko"))
    )
    return lines + textwrap.wrap(legend, 79)


def groups_table(
    task_report: dict[str, Any],
    systems: Sequence[str],
    labels: dict[str, str] | None = None,
    final: str = "neko",
) -> tuple[list[str], list[list[str]]]:
    """One task scored per group (``neko eval``'s ``groups``: recognizer, condition, ...): a row per
    group with its rows, the 1-best, the N-best oracle, each system, and ``final``'s change vs the
    1-best with its paired 95% CI and harm rate. WER tasks only."""
    labels = labels or {}
    header = ["group", "rows", "1-best", "N-best oracle", *[labels.get(s, s) for s in systems]]
    header += [f"{labels.get(final, final)}: Δ [95% CI]", "harm %"]
    rows = []
    for name, g in (task_report.get("groups") or {}).items():
        if "error" in g:
            rows.append([name, str(g.get("rows", 0)), *(["–"] * (len(header) - 2))])
            continue
        cells = [name, str(g.get("n_scored", g.get("rows", 0))), _cell(g, "1best", "wer")]
        cells.append(_cell(g, "oracle:nbest", "wer"))
        cells += [_cell(g, s, "wer") for s in systems]
        cmp = (g.get("vs_1best") or {}).get(final) or {}
        harm = cmp.get("harm")
        cells += [
            _delta_cell(cmp.get("paired"), 100.0) or "–",
            f"{100 * harm['harm_rate']:.1f}" if harm else "–",
        ]
        rows.append(cells)
    return header, rows


def compact_groups(groups: dict[str, Any]) -> list[str]:
    """The console view of ASR per recognizer domain: 1-best, the LM rescoring baseline, NeKo raw /
    rescoring / final WER, the final change with its 95% CI and harm (under 80 columns)."""
    head = f"{'ASR domain':<22}{'1-best':>6}{'LM':>6}{'raw':>6}{'resc.':>6}{'final':>6}  {'final Δ [95% CI]':<20}{'harm':>6}"
    lines = [head, "-" * len(head)]
    for name, g in groups.items():
        if "error" in g:
            continue
        cells = [_cell(g, n, "wer") for n in ("1best", "lm_base", "neko_raw", "neko_rescore", "neko")]
        cmp = (g.get("vs_1best") or {}).get("neko") or {}
        ci = _delta_cell(cmp.get("paired"), 100.0).replace(", ", ",") or "–"
        harm = f"{100 * cmp['harm']['harm_rate']:.1f}%" if cmp.get("harm") else "–"
        lines.append(f"{name[:21]:<22}" + "".join(f"{c:>6}" for c in cells) + f"  {ci:<20}{harm:>6}")
    return lines


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def print_table(
    header: list[str], rows: list[list[str]], title: str = "", console: Console | None = None
) -> None:
    console = console or Console()
    table = Table(title=title or None, title_justify="left")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)


def average_summary(report: dict[str, Any], systems: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per system: mean WER over the WER tasks and the MT BLEU (unweighted over tasks), plus the
    mean relative WER reduction vs the 1-best: what "better on the average over tasks" means here."""
    out: dict[str, dict[str, float]] = {}
    for name in ["1best", *systems]:
        wers, rels, bleu = [], [], None
        for task, t in report.get("tasks", {}).items():
            s = t["systems"].get(name)
            if s is None:
                continue
            if t["metric"] == "wer":
                wers.append(s["wer"])
                base = t["systems"]["1best"]["wer"]
                if base > 0:
                    rels.append((base - s["wer"]) / base)
            elif task == "mt":
                bleu = s["bleu"]
        out[name] = {
            "mean_wer": sum(wers) / len(wers) if wers else float("nan"),
            "mean_rel_wer_reduction": sum(rels) / len(rels) if rels else float("nan"),
            "mt_bleu": bleu if bleu is not None else float("nan"),
        }
    return out


def averages_table(
    averages: dict[str, dict[str, float]], labels: dict[str, str] | None = None
) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of :func:`average_summary`: the "better on the average" comparison."""
    labels = {**BASELINE_LABELS, **(labels or {})}
    header = ["system", "mean WER %", "mean rel. WER reduction %", "MT BLEU"]
    rows = [
        [
            labels.get(n, n),
            f"{100 * a['mean_wer']:.2f}",
            f"{100 * a['mean_rel_wer_reduction']:+.1f}",
            f"{a['mt_bleu']:.2f}",
        ]
        for n, a in averages.items()
    ]
    return header, rows


def pairs_table(
    report: dict[str, Any],
    labels: dict[str, str] | None = None,
    columns: Sequence[tuple[str, str, str]] = COLUMNS,
) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per head-to-head pair, the paired-bootstrap difference per task with its CI.

    WER in points (negative: the first system makes fewer errors), BLEU in points (positive: better).
    A CI that contains 0 means the test rows cannot tell the two systems apart."""
    labels = {**BASELINE_LABELS, **(labels or {})}
    tasks = report.get("tasks", {})
    cols = [(title, task, metric) for title, task, metric in columns if task in tasks and metric != "cer"]
    names = sorted({k for t in tasks.values() for k in t.get("pairs", {})})
    header = ["difference"] + [f"Δ {title}" for title, _, _ in cols]
    rows = []
    for key in names:
        a, b = key.split(" vs ")
        row = [f"{labels.get(a, a)} − {labels.get(b, b)}"]
        for _, task, metric in cols:
            pr = tasks[task].get("pairs", {}).get(key)
            scale = 1.0 if metric == "bleu" else 100.0
            row.append(_delta_cell(pr, scale))
        rows.append(row)
    return header, rows
