"""``neko experiment``: the paper's comparison at an equal training budget, on the same data and rows.

Systems (one base, the benchmark's train split, the same optimizer steps of the same packed rows, so
the same training tokens up to packing; the output's budget table lists what each really trained):
- ``dense``: full fine-tune of the dense base (the paper's "Gemma 2B FFT" / "Mistral 7B FFT").
- ``moe``: the up-cycled MoE, plain top-K routing, every weight trained ("Gemma 8x2B FFT" /
  "Mixtral 8x7B FFT").
- ``neko``: the same MoE with task-guided routing (ours).
- ``lora``: LoRA on the plain-routing MoE ("Mixtral 8x7B LoRA"): rank-r adapters on the attention
  and FFN projections and on every expert (PEFT's parameter adapters for the 3-D expert tensors, one
  rank-r pair per expert); the routers train in full, since an up-cycled router starts random.
- ``btx``: Branch-Train-MiX with the MoE's expert count: one dense branch per task for
  ``btx_branch_share`` of the budget (split evenly), merged into ``num_experts`` experts (expert i =
  task i's branch FFN, the rest copies of the base's FFN), then plain-routing MoE fine-tuning for
  the rest of the budget.
- ``single``: one dense model per task, trained on that task alone for ``steps // n_tasks`` steps and
  scored on it (the paper's Table 5 "directly fine-tuned" model, an MoE there); the models together
  get one system's budget. Dense, not MoE: one task leaves task-guided routing nothing to separate,
  and a fifth of the budget is too few steps for an up-cycled MoE's randomly initialised routers.
- ``moe_lb`` / ``neko_lb``: the MoE pair again with the same standard load-balancing loss (ablation).
Load balancing: the paper names no auxiliary loss, so ``moe`` and ``neko`` train with none
(``aux_loss="off"``), the same for both; ``*_lb`` adds the same Switch loss to both.

Evaluation: every system decodes the same rows greedily with plain generation and nothing else (no
copy bias, no correction policy, no guard, every row decoded; each row's token limit from its input
length; top-K = the model's own; :data:`~neko.experiment.config.PLAIN_DECODING`): the seen tasks'
test rows, ASR ``asr_rows_per_domain`` per recognizer domain and scored per domain (Tables 2, 3 and
5), the unseen typo task 0-shot and 5-shot (Table 6), and ``test_zeroshot.jsonl``: Whisper tiny.en N-best on
held-out conditions, per condition (Table 1), PocketSphinx on held-out voices (a separate group) and
MT round trips through held-out pivot languages (Table 4's analog: English -> pivot -> English
correction, not translation). NeKo is also decoded with top-1/top-3 routing, and compared head to
head with every other system (paired bootstrap on the same rows).

The steps, each in its own module: settings and profiles (:mod:`~neko.experiment.config`), the
budget and its time estimate (:mod:`~neko.experiment.budget`), training the systems
(:mod:`~neko.experiment.systems`), cached decoding (:mod:`~neko.experiment.decoding`), the tables
(:mod:`~neko.experiment.tables`); this module runs them in order and scores.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from neko.experiment import tables as T
from neko.experiment.budget import Estimate, estimate, estimate_seconds
from neko.experiment.config import CPU_MOE_LAYERS, PLAIN_DECODING, PROFILES, SYSTEMS, ExperimentConfig
from neko.experiment.decoding import DECODING, ScoredRows, SystemOutputs, decode_all, decode_seconds
from neko.experiment.evaluate import score_system_outputs, write_predictions
from neko.experiment.publish import command_line
from neko.experiment.report import average_summary, averages_table, pairs_table, print_table, results_rows
from neko.experiment.rows import UNSEEN_TASKS, asr_domain_condition, load_split, subsample_asr_by
from neko.experiment.systems import train_systems
from neko.experiment.tables import experiment_markdown, system_labels
from neko.io import atomic_write_json, atomic_write_text
from neko.schema import Example

__all__ = [
    "ExperimentConfig",
    "run_experiment",
    "plan_experiment",
    "ExperimentPlan",
    "experiment_markdown",
    "command_line",
    "system_labels",
    "estimate_seconds",
    "SYSTEMS",
    "PROFILES",
    "CPU_MOE_LAYERS",
    "ZEROSHOT_FILE",
]

ZEROSHOT_FILE = "test_zeroshot.jsonl"


@dataclass
class _Scores:
    """``neko eval`` reports of the seen rows (ASR also per recognizer domain, with NeKo's head-to-head
    ``pairs``), the typo rows and the zero-shot rows (``tasks``: MT; ``asr_domains``: ASR per
    recognizer domain, each per held-out condition)."""

    seen: dict[str, Any]
    typo: dict[str, Any] | None
    zeroshot: dict[str, Any]
    pairs: list[tuple[str, str]]


@dataclass
class ExperimentPlan:
    """What a run will train and decode: the seen tasks, the scored rows and the CPU estimate."""

    tasks: list[str]
    rows: ScoredRows
    estimate: Estimate


def plan_experiment(cfg: ExperimentConfig, console: Console | None = None) -> ExperimentPlan:
    """Load the rows ``cfg`` scores and print what the run will do and its estimated time on a
    2-core CPU, before anything trains (``neko experiment --estimate-only`` stops here)."""
    console = console or Console()
    tasks, rows = _load_rows(cfg)
    est = estimate(cfg, len(rows.seen), len(rows.typo), len(rows.zeroshot), len(tasks))
    console.rule("[bold]neko experiment")
    console.print(
        f"{len(cfg.systems)} systems ({', '.join(cfg.systems)}) x {cfg.steps} optimizer steps of "
        f"{cfg.micro_batch_size} packed rows of <= {cfg.max_seq_len} tokens; scored on {len(rows.seen)} "
        f"seen-task test rows, {len(rows.typo)} typo rows (0- and 5-shot) and {len(rows.zeroshot)} "
        f"zero-shot rows; NeKo also at inference top-K {cfg.inference_top_k or 'none'}; "
        f"{est.decode_rows:,} decodes"
    )
    if cfg.precision == "fp32":
        measured = cfg.base == "smollm2" and cfg.moe_layers in (CPU_MOE_LAYERS, "24-29")
        # the measured speeds are for this shape only (all-layer MoE trains 2.3x slower)
        caveat = "" if measured else "; measured for SmolLM2 with its last 6 layers MoE, not this shape"
        console.print(
            f"estimated time on a quiet 2-core CPU: {_hm(est.total_s)} (training {est.train_s / 3600:.1f} h, "
            f"decoding {est.decode_s / 60:.0f} min), up to {_hm(est.slow_s)} on "
            f"a slower 2-core CPU (neko.experiment.budget, bench/NOTES.md{caveat})"
        )
    return ExperimentPlan(tasks, rows, est)


def _hm(seconds: float) -> str:
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m:02d} min"


def run_experiment(cfg: ExperimentConfig, console: Console | None = None) -> dict[str, Any]:
    """Train every system at the same budget, score all on the same rows, report every table."""
    console = console or Console()
    t0 = time.time()
    out = Path(cfg.output_dir)
    plan = plan_experiment(cfg, console)
    tasks, rows = plan.tasks, plan.rows
    labels = system_labels(cfg, len(tasks))
    trained = train_systems(cfg, out, tasks, labels, console)
    outs = decode_all(cfg, out, trained, rows, labels, console)
    summary = _report(cfg, out, rows, outs, _score(cfg, rows, outs), labels, trained.budgets, console)
    summary["estimate_s"] = round(plan.estimate.total_s, 1)
    summary["estimate_slow_s"] = round(plan.estimate.slow_s, 1)
    summary["elapsed_s"] = round(time.time() - t0, 1)
    atomic_write_json(out / "experiment.json", summary)
    atomic_write_text(out / "results.md", f"{summary['title']}\n\n{experiment_markdown(summary)}")
    return summary


def _load_rows(cfg: ExperimentConfig) -> tuple[list[str], ScoredRows]:
    """The seen tasks (those of the train split) and the rows every system is scored on: ASR
    stratified by recognizer domain (zero-shot: by domain and held-out condition), the rest per task."""
    data = Path(cfg.data_dir)
    for split in ("train", "dev", "test"):
        if not (data / f"{split}.jsonl").is_file():
            raise FileNotFoundError(
                f"{data / (split + '.jsonl')}: benchmark split missing; run `neko data build --out {data}`"
            )
    tasks = sorted({e.task for e in load_split(data / "train.jsonl") if e.task not in UNSEEN_TASKS})
    n, asr, seed = cfg.eval.rows_per_task, cfg.asr_rows_per_domain, cfg.eval.seed
    test = subsample_asr_by(load_split(data / "test.jsonl"), n, asr, seed=seed)
    zs_path = data / ZEROSHOT_FILE
    zeroshot = (
        subsample_asr_by(load_split(zs_path), n, asr, asr_domain_condition, seed)
        if cfg.zeroshot and zs_path.is_file()
        else []
    )
    return tasks, ScoredRows(
        seen=[e for e in test if e.task not in UNSEEN_TASKS],
        typo=[e for e in test if e.task in UNSEEN_TASKS],
        zeroshot=zeroshot,
        dev=load_split(data / "dev.jsonl"),
    )


def _trained(outs: SystemOutputs) -> list[str]:
    """The trained systems in the configured order, then the single-task models (not NeKo's top-K)."""
    return [n for n in outs.seen if not n.startswith("neko_top")]


def _subset(
    rows: list[Example], outs: dict[str, list[str]], keep: list[int]
) -> tuple[list[Example], dict[str, list[str]]]:
    """The rows at ``keep`` and each system's outputs on them."""
    return [rows[i] for i in keep], {n: [o[i] for i in keep] for n, o in outs.items()}


def _score(cfg: ExperimentConfig, rows: ScoredRows, outs: SystemOutputs) -> _Scores:
    trained = _trained(outs)
    pairs = [("neko", n) for n in trained if n != "neko"] if "neko" in outs.seen else []
    seen = score_system_outputs(rows.seen, outs.seen, seed=cfg.seed, pairs=pairs)
    asr = [i for i, e in enumerate(rows.seen) if e.task == "asr"]
    if asr:  # ASR per recognizer domain: one mixed number would hide which recognizer gains
        part = score_system_outputs(
            *_subset(rows.seen, outs.seen, asr), seed=cfg.seed, pairs=pairs, group_by="domain"
        )
        seen["tasks"]["asr"]["groups"] = part["tasks"]["asr"]["groups"]
    typo = score_system_outputs(rows.typo, outs.typo, seed=cfg.seed) if outs.typo else None
    zeroshot: dict[str, Any] = {"tasks": {}, "asr_domains": {}}
    if outs.zeroshot:
        mt = [i for i, e in enumerate(rows.zeroshot) if e.task == "mt"]
        if mt:
            part = score_system_outputs(*_subset(rows.zeroshot, outs.zeroshot, mt), seed=cfg.seed)
            zeroshot["tasks"]["mt"] = part["tasks"]["mt"]
        for dom in sorted({e.meta["domain"] for e in rows.zeroshot if e.task == "asr"}):
            idx = [i for i, e in enumerate(rows.zeroshot) if e.task == "asr" and e.meta["domain"] == dom]
            part = score_system_outputs(
                *_subset(rows.zeroshot, outs.zeroshot, idx), seed=cfg.seed, group_by="condition"
            )
            zeroshot["asr_domains"][dom] = part["tasks"]["asr"]
    return _Scores(seen, typo, zeroshot, pairs)


def _report(
    cfg: ExperimentConfig,
    out: Path,
    rows: ScoredRows,
    outs: SystemOutputs,
    scores: _Scores,
    labels: dict[str, str],
    budgets: dict[str, dict[str, Any]],
    console: Console,
) -> dict[str, Any]:
    """Print the main tables, keep every output in predictions.jsonl, return the run's summary."""
    report = scores.seen
    trained = _trained(outs)
    # trained systems in the configured order, then the single-task models, then NeKo's top-K variants
    systems = trained + [n for n in outs.seen if n.startswith("neko_top")]
    typo_systems = [n for n in trained if f"{n}@0shot" in outs.typo]
    table5 = [n for n in ("single", "dense", "moe", "neko") if n in outs.seen]
    zs_systems = list(outs.zeroshot)
    averages = average_summary(report, systems)
    view, columns = T.seen_view(report)
    by_domain = scores.zeroshot["asr_domains"]
    whisper = [d for d in by_domain if d != "pocketsphinx"]
    seen_table = results_rows(view, systems, labels, columns=columns)
    tables = {
        "budget": T.markdown(T.budget_table(budgets, labels)),
        "seen": T.markdown(seen_table),
        "averages": T.markdown(averages_table(averages, labels)),
        "pairs": T.markdown(pairs_table(view, labels, columns=columns)),
        "zeroshot_asr_neural": T.markdown(T.zeroshot_asr_table(by_domain, whisper, zs_systems, labels)),
        "zeroshot_asr_pocketsphinx": T.markdown(
            T.zeroshot_asr_table(by_domain, ["pocketsphinx"], zs_systems, labels)
        ),
        "zeroshot_mt": T.markdown(T.zeroshot_mt_table(scores.zeroshot, zs_systems, labels)),
        "single_task": T.markdown(T.single_task_table(view, table5, labels, columns=columns))
        if "single" in outs.seen
        else "",
        "typo": T.markdown(T.typo_table(scores.typo, typo_systems, labels)),
    }
    machine = "GPU" if cfg.precision != "fp32" else "CPU"
    asr_rows = f", ASR {cfg.asr_rows_per_domain or 'all'} per recognizer domain"
    title = (
        f"neko experiment on {machine}: {cfg.steps} optimizer steps x {cfg.micro_batch_size} packed rows per "
        f"system, {len(rows.seen)} seen-task test rows ({cfg.eval.rows_per_task or 'all'} per task{asr_rows}), "
        f"{len(rows.typo)} typo rows, {len(rows.zeroshot)} zero-shot rows, precision {cfg.precision}"
    )
    print_table(*seen_table, title, console)
    print_table(*averages_table(averages, labels), "averages over tasks", console)
    if scores.pairs:
        print_table(
            *pairs_table(view, labels, columns=columns), "head to head (paired bootstrap, 95% CI)", console
        )
    # re-score with ``neko eval --pred predictions.jsonl --systems neko,moe,...`` (``--by domain`` for ASR)
    write_predictions(out / "predictions.jsonl", rows.seen, outs.seen)
    return {
        "config": asdict(cfg),
        "machine": machine,
        "title": title,
        "labels": labels,
        "budgets": budgets,
        "decoding": DECODING,
        "decoding_options": PLAIN_DECODING,
        "report": report,
        "typo_report": scores.typo,
        "zeroshot_report": scores.zeroshot,
        "averages": averages,
        "train_seconds": {n: b["seconds"] for n, b in budgets.items()},
        "decode_seconds": decode_seconds(out),
        "table_markdown": tables["seen"],
        "tables": tables,
    }
