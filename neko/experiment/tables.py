"""The comparison's tables, each the analog of one table of the NeKo paper (``neko experiment``).

Every cell comes from a report of :func:`neko.experiment.evaluate.score_system_outputs` computed in
the same run. WER/CER in %, after the Whisper English normalizer; BLEU 0-100, sacrebleu corpus BLEU
(13a tokenizer) on the raw text, not normalized. "Δ [95% CI]" is the paired bootstrap difference
against the uncorrected 1-best on the same rows (WER in points, negative = fewer errors; BLEU
positive = better). Every caption names how the rows were decoded (:func:`decoding_phrase`).

Paper table -> ours:
- Table 2 (Open ASR Leaderboard: dense FFT, MoE FFT, LoRA, BTX, NeKo) and Table 3 (ST/MT, the same
  systems): every trained system on the in-domain test rows of all five tasks, ASR per recognizer
  domain (:func:`seen_view`, :func:`neko.experiment.report.results_rows`, with harm rates and Δ vs
  the 1-best). Our MT column is correction of English -> pivot -> English round trips (Apertium),
  not translation from a source language.
- Table 1 (zero-shot correction of a neural recognizer's N-best on unseen domains):
  :func:`zeroshot_asr_table` on Whisper tiny.en's held-out conditions, per condition; PocketSphinx's
  held-out voices are a separate table.
- Table 4 (zero-shot MT on language pairs never trained): :func:`zeroshot_mt_table`, correction of
  English round trips through pivot languages no training row used.
- Table 5 (NeKo vs a model fine-tuned on each task alone): :func:`single_task_table`.
- Table 6 (the unseen typo task, 0-shot and 5-shot): :func:`typo_table`.

:func:`experiment_markdown` puts a run's tables in that order, each under its title; the systems are
named by :func:`system_labels`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from neko.experiment.budget import single_steps
from neko.experiment.config import ExperimentConfig
from neko.experiment.report import (
    BASELINE_LABELS,
    COLUMNS,
    average_summary,
    averages_table,
    pairs_table,
    to_markdown,
)

__all__ = [
    "system_labels",
    "experiment_markdown",
    "decoding_phrase",
    "markdown",
    "SECTIONS",
    "MT_ROUND_TRIP",
    "budget_table",
    "seen_view",
    "zeroshot_asr_table",
    "zeroshot_mt_table",
    "single_task_table",
    "typo_table",
]

MT_ROUND_TRIP = "MT = correction of English -> pivot -> English round trips, not translation"
SCORES = (
    "Scores: WER/CER % after the Whisper English normalizer; BLEU: sacrebleu corpus BLEU (13a tokenizer) "
    "on the raw text, not normalized"
)

# (title, table key): the order and the paper table each table mirrors; "{decoding}" is filled in
# from the run's summary (:func:`decoding_phrase`).
SECTIONS = (
    ("Training budget (equal for every system; tokens = real answer+prompt tokens trained on)", "budget"),
    (
        "Seen tasks, in-domain test rows (analog of the paper's Tables 2 and 3; ASR per recognizer domain; "
        f"{MT_ROUND_TRIP}; decoding: {{decoding}})",
        "seen",
    ),
    (
        "Averages over tasks (WER tasks unweighted, ASR = all its domains' rows together; MT round-trip BLEU "
        "separately; decoding: {decoding})",
        "averages",
    ),
    (
        "Head to head on the same rows (paired bootstrap, 95% CI; WER in points, negative = fewer errors; "
        "BLEU in points, positive = better; decoding: {decoding})",
        "pairs",
    ),
    (
        "Zero-shot correction of Whisper tiny.en N-best on held-out conditions: a voice, a noise type and a "
        "channel no training row has (analog of Table 1), WER % (relative change vs the 1-best); "
        "decoding: {decoding}",
        "zeroshot_asr_neural",
    ),
    (
        "Zero-shot ASR, a separate group: PocketSphinx on flite voices no training row has (not the paper's "
        "neural recognizer), WER % (relative change vs the 1-best); decoding: {decoding}",
        "zeroshot_asr_pocketsphinx",
    ),
    # the Table 1 analog of runs before the Whisper rows joined: PocketSphinx's held-out voices only
    (
        "Zero-shot ASR, PocketSphinx on flite voices no training row has (analog of Table 1), WER % "
        "(relative change); decoding: {decoding}",
        "zeroshot_asr",
    ),
    (
        "Zero-shot MT round-trip correction: English -> pivot -> English through pivot languages no training "
        "row used (analog of Table 4, which translates new language pairs; ours corrects English round "
        "trips), BLEU; decoding: {decoding}",
        "zeroshot_mt",
    ),
    (
        "Single-task fine-tuning vs multi-task (analog of Table 5): the single-task models are dense, one per "
        "task, each trained on its own task only on a fifth of one system's budget (the paper's are MoE; "
        "one task leaves task-guided routing nothing to separate, and a fifth of the budget is too few "
        "steps for an up-cycled MoE's random routers); decoding: {decoding}",
        "single_task",
    ),
    ("Unseen typo task, 0-shot and 5-shot (analog of Table 6), WER %; decoding: {decoding}", "typo"),
)


def system_labels(cfg: ExperimentConfig, n_tasks: int = 5) -> dict[str, str]:
    """What each system is, in the words the tables use."""
    k, e = cfg.top_k, cfg.num_experts
    bal = "" if cfg.aux_loss == "off" else f", {cfg.aux_loss} balance loss {cfg.aux_coef:g}"
    return {
        "dense": "dense FFT",
        "moe": f"MoE FFT ({e} experts, plain top-{k}{bal})",
        "neko": f"NeKo ({e} experts, task-guided top-{k}{bal})",
        "lora": f"MoE LoRA r={cfg.lora_r} (attention, FFN and experts; routers in full; plain top-{k})",
        "btx": f"BTX ({n_tasks} task branches + {max(0, e - n_tasks)} seed experts, then MoE FFT)",
        "single": f"single-task dense FFT ({n_tasks} dense models, each {single_steps(cfg, n_tasks)} steps "
        "on its own task only)",
        "moe_lb": f"MoE FFT + standard balance loss {cfg.aux_coef:g}",
        "neko_lb": f"NeKo + standard balance loss {cfg.aux_coef:g}",
        **{f"neko_top{i}": f"NeKo, top-{i} inference" for i in range(1, e + 1)},
    }


# Runs that did not record their decoding options had the Corrector's default copy bias.
OLD_COPY_BIAS = (
    "the Corrector's default copy bias (1.5 on single-text inputs: OCR, TEC, typo; from commit e2abfd3)"
)


def decoding_phrase(summary: dict[str, Any]) -> str:
    """How a run's rows were decoded, in a caption's words (from ``decoding_options``)."""
    opts = summary.get("decoding_options")
    if opts is None:
        return f"greedy, no policy, no guard, {OLD_COPY_BIAS}"
    bias = opts.get("copy_bias")
    copy = "no copy bias" if bias == 0 else f"copy bias {bias}" if bias is not None else "default copy bias"
    policy = "no policy" if opts.get("mode") == "generate" else f"mode {opts.get('mode')}"
    guard = "no guard" if opts.get("guard") == "off" else f"guard {opts.get('guard')}"
    return f"greedy, {copy}, {policy}, {guard}"


def experiment_markdown(summary: dict[str, Any]) -> str:
    """Every table of a run, each under the paper table it mirrors."""
    tables = summary.get("tables")
    if tables is None:  # a summary from before the tables were split by paper table
        labels = summary.get("labels") or system_labels(ExperimentConfig())
        report = summary["report"]
        tables = {
            "seen": summary["table_markdown"],
            "averages": to_markdown(
                *averages_table(summary.get("averages") or average_summary(report, []), labels)
            ),
            "pairs": to_markdown(*pairs_table(report, labels)),
        }
    decoding = decoding_phrase(summary)
    head = f"Decoding: {summary['decoding']}." if summary.get("decoding") else ""
    if head and summary.get("decoding_options") is None:
        head += f" Not recorded by this run: {OLD_COPY_BIAS} applied."
    parts = [head, f"{SCORES}."]
    for title, key in SECTIONS:
        text = tables.get(key) or ""
        if text.strip() and "|" in text.split("\n", 2)[-1]:
            parts.append(f"{title.format(decoding=decoding)}:\n\n{text}")
    return "\n\n".join(p for p in parts if p)


def seen_view(report: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """The seen-task report as the tables show it, with its columns: ASR one column per recognizer
    domain (the report's ``groups``; one mixed number would hide which recognizer a system helps),
    MT named as the round-trip correction it is."""
    tasks = report.get("tasks", {})
    groups = {d: g for d, g in ((tasks.get("asr") or {}).get("groups") or {}).items() if "systems" in g}
    view = {k: v for k, v in tasks.items() if not (k == "asr" and groups)}
    cols: list[tuple[str, str, str]] = []
    for title, task, metric in COLUMNS:
        if task == "asr" and groups:
            for dom, g in groups.items():
                view[f"asr:{dom}"] = g
                cols.append((f"ASR WER {dom} ({g.get('n_scored', '?')} rows)", f"asr:{dom}", metric))
        else:
            cols.append(("MT round-trip BLEU" if task == "mt" else title, task, metric))
    return {**report, "tasks": view}, cols


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
    by_domain: dict[str, dict[str, Any]],
    domains: Sequence[str],
    systems: Sequence[str],
    labels: dict[str, str],
) -> tuple[list[str], list[list[str]]]:
    """Table 1 analog: WER % per system on the zero-shot ASR rows of ``domains`` (recognizer domain
    -> its task report with ``groups`` per held-out condition), a column per condition and one for
    the domain's rows together, with the relative change vs the 1-best, beside the oracles."""
    domains = [d for d in domains if (by_domain.get(d) or {}).get("systems")]
    if not domains:
        return [], []
    labels = {**BASELINE_LABELS, **labels}
    parts = []
    for dom in domains:
        report = by_domain[dom]
        prefix = f"{dom} / " if len(domains) > 1 else ""
        groups = sorted((report.get("groups") or {}).items())
        parts += [(f"{prefix}{cond}", t) for cond, t in groups if "systems" in t]
        parts.append((f"all {dom} rows", report))
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
    """Table 4 analog: BLEU of the correction of English round trips through pivot languages no
    training row used (the reference is the original English sentence)."""
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
    report: dict[str, Any],
    systems: Sequence[str],
    labels: dict[str, str],
    columns: Sequence[tuple[str, str, str]] = COLUMNS,
) -> tuple[list[str], list[list[str]]]:
    """Table 5 analog: per task (``columns``, e.g. :func:`seen_view`'s), the uncorrected input, the
    single-task model (its own task only) and the multi-task systems, metric per task."""
    labels = {**BASELINE_LABELS, **labels}
    tasks = report.get("tasks", {})
    cols = [c for c in columns if c[1] in tasks and c[2] != "cer"]
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
