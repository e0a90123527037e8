"""``neko quickstart``: the main job end to end on the shipped benchmark.

base (SmolLM2-135M-Instruct, from a PyPI wheel) -> up-cycled 8-expert top-2 MoE -> task-guided
training on the benchmark's train split -> the correction policy tuned on dev -> correction of the
test splits -> the results table (1-best, ROVER, oracles, plain LM rescoring with the base, NeKo's
raw generation, NeKo's rescoring, NeKo final = policy + guard, harm rates, bootstrap CIs) -> a model
directory that ``neko correct`` uses right after, and the task x expert routing heatmap.

Deterministic by construction: the default trains a fixed number of optimizer steps (never a time
budget), decodes greedily and draws every subset with a fixed seed, so the same command prints the
same table on any machine of the same kind; a faster machine only finishes sooner. (A time budget is
still available with ``train_time_s``, and then the steps depend on the machine's speed.)

CPU profile (the default without a GPU, 22-55 minutes on 2 cores by its printed estimate): only the last 6 of
SmolLM2's 30 layers become MoE (8 experts, top-2) and every weight trains, for a fixed 80 steps
(ASR at half sampling weight, see ``task_weights``).
Chosen on dev (bench/bench_train_choices.py, bench/NOTES.md): training only the MoE layers runs at
2.1x the tokens/s but left raw generation far worse than the 1-best on ASR, MT and TEC-coherence at
60 steps; freezing only the embeddings matched full fine-tuning on dev but was not faster. The policy
is tuned on ``policy_dev_rows`` dev rows per task (ASR: ``asr_dev_rows_per_domain`` rows of each
neural recognizer's domain); ``rows_per_task`` test rows per task are scored, ASR
``asr_rows_per_domain`` per recognizer domain (PocketSphinx, Whisper tiny.en, Whisper tiny.en on
held-out conditions, HyPoradise ATIS), reported per domain and condition.
GPU profile: the paper's recipe scale for this data (all layers MoE, 3 epochs, bf16, every test row).
Everything a run decides is written into ``quickstart.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from rich.console import Console

from neko.experiment.config import QuickstartConfig, has_gpu
from neko.experiment.evaluate import (
    Predictions,
    lm_rescoring,
    predict,
    score_system_outputs,
    write_predictions,
)
from neko.experiment.recipe import train_config
from neko.experiment.report import compact_groups, compact_summary, groups_table, results_rows, to_markdown
from neko.experiment.rows import UNSEEN_TASKS, asr_domain, load_split, subsample, subsample_by
from neko.infer.options import CorrectionOptions
from neko.infer.policy import load_policy
from neko.infer.tuning import tune_on_dev
from neko.io import atomic_write_json, atomic_write_text
from neko.model.stats import routing_report_from_dir
from neko.schema import Example
from neko.train.config import TrainConfig, config_to_dict
from neko.train.loop import TrainResult, train
from neko.train.modeling import base_model_dir

__all__ = ["QuickstartConfig", "run_quickstart", "has_gpu", "estimate_minutes", "SYSTEM_LABELS"]

# What the table calls each system (keys are the report's system names).
SYSTEM_LABELS = {
    "lm_base": "LM rescoring (untrained base)",
    "neko_raw": "NeKo raw generation",
    "neko_constrained": "NeKo N-best-constrained generation",
    "neko_rescore": "NeKo rescoring",
    "neko": "NeKo final (policy + guard)",
}
# Measured on 2-core CPUs (bench/NOTES.md): training tokens/s of the CPU profile (every weight
# trained; 65 on the slower of the two machine kinds seen, ~190 on a quiet faster one), and seconds
# per decoded row (generation + scoring; 0.8 s measured over a whole run's dev and test decodes).
CPU_TRAIN_TOKENS_PER_S = (65.0, 190.0)
CPU_SECONDS_PER_ROW = (1.6, 0.8)


def estimate_minutes(cfg: QuickstartConfig, n_test_rows: int) -> tuple[float, float]:
    """(fast, slow) wall-clock minutes of a CPU run from the measured speeds above."""
    tokens = cfg.steps * cfg.micro_batch_size * cfg.max_seq_len
    rows = n_test_rows + cfg.policy_dev_rows * 4 + cfg.asr_dev_rows_per_domain * 2
    fast = tokens / CPU_TRAIN_TOKENS_PER_S[1] + rows * CPU_SECONDS_PER_ROW[1]
    slow = tokens / CPU_TRAIN_TOKENS_PER_S[0] + rows * CPU_SECONDS_PER_ROW[0]
    return fast / 60 + 0.5, slow / 60 + 1.0  # + loading, up-cycling, saving


def model_train_config(cfg: QuickstartConfig, out: Path) -> TrainConfig:
    """The quick start's task-guided training run (the recipe shared with ``neko experiment``)."""
    return train_config(
        cfg,
        out,
        "neko",
        steps=cfg.steps,
        epochs=cfg.epochs,
        precision="bf16" if cfg.gpu else "fp32",
        train_layers=cfg.train_layers,
        time_budget_s=cfg.train_time_s,
        task_weights=cfg.task_weights,
        use_chat_template=cfg.use_chat_template,
    )


def _finished_training(tc: TrainConfig, model_dir: Path) -> TrainResult | None:
    """The TrainResult of a finished run of exactly ``tc`` (data files compared by content) in
    ``model_dir`` (``neko_train.json`` is written last, so its presence means a complete model), or
    None."""
    summary = model_dir / "neko_train.json"
    if not summary.is_file() or (model_dir / "checkpoints").exists():
        return None
    d = json.loads(summary.read_text(encoding="utf-8"))
    if _by_content(d.get("config") or {}) != _by_content(json.loads(json.dumps(config_to_dict(tc)))):
        return None
    return TrainResult(**{f.name: d[f.name] for f in fields(TrainResult) if f.name in d})


def _by_content(config: dict[str, Any]) -> dict[str, Any]:
    """A training config with each data file named by its sha256 (a file that is gone keeps its path,
    so it never matches): the same training from another checkout of the same data still matches."""
    out = json.loads(json.dumps(config))
    for src in (out.get("data") or {}).get("train") or []:
        path = Path(src.get("path", ""))
        if path.is_file():
            src["path"] = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _check_data(data: Path) -> None:
    for split in ("train", "dev", "test"):
        if not (data / f"{split}.jsonl").exists():
            raise FileNotFoundError(
                f"{data / (split + '.jsonl')}: benchmark split missing; run `neko data build --out {data}`"
            )


def run_quickstart(cfg: QuickstartConfig | None = None, console: Console | None = None) -> dict[str, Any]:
    """Train, tune, evaluate and report; returns the summary dict also written to ``quickstart.json``."""
    console = console or Console()
    cfg = (cfg or QuickstartConfig()).for_device()
    out, data = Path(cfg.output_dir), Path(cfg.data_dir)
    _check_data(data)
    t0 = time.time()
    rows = test_rows(cfg, data)
    seen = [e for e in rows if e.task not in UNSEEN_TASKS]
    unseen = [e for e in rows if e.task in UNSEEN_TASKS]
    n_decoded = len(seen) + 2 * len(unseen)
    console.rule("[bold]neko quickstart")
    budget = (
        f"{cfg.train_time_s:.0f} s (time budget: the steps depend on this machine's speed)"
        if cfg.train_time_s
        else (
            f"{cfg.steps} steps x {cfg.micro_batch_size} rows of <= {cfg.max_seq_len} tokens"
            if cfg.steps
            else f"{cfg.epochs} epoch(s)"
        )
    )
    console.print(
        f"base={cfg.base} experts={cfg.num_experts} top-k={cfg.top_k} moe_layers={cfg.moe_layers or 'all'} "
        f"trained={cfg.train_layers or 'every weight'} device={'GPU' if cfg.gpu else 'CPU'}\n"
        f"training: {budget}; policy tuned on {cfg.policy_dev_rows} dev rows/task; "
        f"{n_decoded} test decodes ({cfg.eval.rows_per_task or 'all'} rows/task)"
    )
    if not cfg.gpu and cfg.steps and not cfg.train_time_s:
        fast, slow = estimate_minutes(cfg, n_decoded)
        console.print(f"estimated time on 2 CPU cores: {fast:.0f}-{slow:.0f} min (more cores: less)")

    console.rule("1/4 train (task-guided MoE)")
    model_dir = out / "model"
    tc = model_train_config(cfg, model_dir)
    result = _finished_training(tc, model_dir) if cfg.reuse_model else None
    if result is not None:
        console.print(f"reusing the model trained with this exact config in {model_dir} (--reuse-model)")
    else:
        # Rerunning the quick start means "run it again": resume a stopped run, else replace the model.
        result = train(tc, resume=(model_dir / "checkpoints").exists(), overwrite=True)
    console.print(
        f"trained {result.steps}/{result.total_steps} steps ({result.stop_reason}), "
        f"{result.tokens} tokens at {result.tokens_per_s:.0f} tok/s, final loss {result.final_loss}"
    )

    dev = load_split(data / "dev.jsonl")
    policy_info = None
    if cfg.policy_dev_rows > 0:
        console.rule("2/4 tune the correction policy on dev")
        policy_info = _tune_policy(cfg, model_dir, dev, out)
        console.print(
            "policy (chosen on dev): " + ", ".join(f"{t} {m}" for t, m in policy_info["modes"].items())
        )

    console.rule("3/4 correct the test splits")
    report, typo_report, lm_settings = _evaluate(cfg, model_dir, dev, seen, unseen, out)

    console.rule("4/4 report")
    summary = _report(
        cfg, out, model_dir, result, policy_info, report, typo_report, lm_settings, len(rows), console
    )
    summary["elapsed_s"] = round(time.time() - t0, 1)
    atomic_write_json(out / "quickstart.json", summary)
    console.print(
        f"done in {summary['elapsed_s']:.0f}s. Model: {model_dir} (try `neko correct --model {model_dir} "
        f"--input data/samples/... --output out.jsonl`); full table: {out / 'results.md'}"
    )
    return summary


def _with_domain(examples: list[Example]) -> list[Example]:
    """ASR rows get ``meta.domain`` (see :func:`neko.experiment.evaluate.asr_domain`), so the table
    and ``neko eval --by domain,condition`` on the predictions break ASR down by recognizer."""
    for e in examples:
        if e.task == "asr":
            e.meta["domain"] = asr_domain(e)
    return examples


def test_rows(cfg: QuickstartConfig, data: Path) -> list[Example]:
    """The scored rows: ``rows_per_task`` per task, ASR ``asr_rows_per_domain`` per recognizer
    domain, with the Whisper rows of the zero-shot file (held-out voice and channels) as a domain."""
    test = load_split(data / "test.jsonl")
    zs_path = data / "test_zeroshot.jsonl"
    zs = (
        [e for e in load_split(zs_path) if e.task == "asr" and e.meta.get("recognizer")]
        if zs_path.exists()
        else []
    )
    asr = _with_domain([e for e in [*test, *zs] if e.task == "asr"])
    domains = {asr_domain(e): cfg.asr_rows_per_domain for e in asr}
    other = subsample([e for e in test if e.task != "asr"], cfg.eval.rows_per_task, cfg.eval.seed)
    return subsample_by(asr, domains, asr_domain, cfg.eval.seed) + other


def policy_dev_rows(cfg: QuickstartConfig, dev: list[Example]) -> list[Example]:
    """Dev rows the policy is tuned on: ``policy_dev_rows`` per seen task, but ASR from the neural
    recognizers' domains (``asr_dev_rows_per_domain`` each: Whisper tiny.en, released Whisper sets)."""
    seen = [e for e in dev if e.task not in UNSEEN_TASKS]
    other = subsample([e for e in seen if e.task != "asr"], cfg.policy_dev_rows, cfg.eval.seed)
    asr = [e for e in seen if e.task == "asr" and e.meta.get("recognizer")]
    if not asr:  # a benchmark with PocketSphinx rows only
        asr = [e for e in seen if e.task == "asr"]
        return subsample(asr, cfg.policy_dev_rows, cfg.eval.seed) + other
    domains = {asr_domain(e): cfg.asr_dev_rows_per_domain for e in asr}
    return subsample_by(asr, domains, asr_domain, cfg.eval.seed) + other


def _tune_policy(cfg: QuickstartConfig, model_dir: Path, dev: list[Example], out: Path) -> dict[str, Any]:
    """Tune the correction policy on seen-task dev rows and save it beside the model (so `neko
    correct` applies it by default too). Test rows are never looked at; the unseen typo task gets the
    default policy for single-text tasks, tuned on the seen ones."""
    rows = policy_dev_rows(cfg, dev)
    opts = CorrectionOptions(
        max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size, dtype=cfg.eval.dtype
    )
    policy = tune_on_dev(
        model_dir,
        rows,
        work_dir=out,
        options=opts,
        max_harm_rate=cfg.max_harm,
        min_gain=cfg.min_gain,
        min_task_rows=min(20, cfg.policy_dev_rows),
    )
    modes = {t: p.mode for t, p in policy.per_task.items()}
    modes["(unseen text tasks)"] = policy.default_text.mode
    per_task = {t: sum(e.task == t for e in rows) for t in sorted({e.task for e in rows})}
    return {
        "dev_rows": len(rows),
        "dev_rows_per_task": per_task,
        "max_harm_rate": cfg.max_harm,
        "modes": modes,
        "policy": policy.to_dict(),
    }


def _evaluate(
    cfg: QuickstartConfig,
    model_dir: Path,
    dev: list[Example],
    seen: list[Example],
    unseen: list[Example],
    out: Path,
) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """Decode the test rows once with every output, add the plain LM rescoring baseline, score."""
    tuned = load_policy(model_dir) is not None
    mode, guard = ("auto", "auto") if tuned else ("generate", "off")
    preds = predict(model_dir, seen, cfg.eval, mode=mode, guard=guard, all_outputs=True, constrained=True)
    nb_tasks = {e.task for e in seen if e.is_nbest}
    nbest = [i for i, e in enumerate(seen) if e.task in nb_tasks]
    text = [i for i, e in enumerate(seen) if e.task not in nb_tasks]
    lm_choice, lm_settings = [], {}
    if nbest:
        base_dir = base_model_dir(cfg.base, cfg.seed, out / "base")
        dev_nb = [e for e in subsample(dev, cfg.policy_dev_rows or 40, cfg.eval.seed) if e.task in nb_tasks]
        lm_choice, lm_settings = lm_rescoring(
            base_dir,
            dev_nb,
            [seen[i] for i in nbest],
            max_harm_rate=cfg.max_harm,
            batch_size=cfg.eval.batch_size,
            dtype=cfg.eval.dtype,
        )
    # LM rescoring of a single text has one candidate: the input itself.
    lm_all = [e.one_best for e in seen]
    for k, i in enumerate(nbest):
        lm_all[i] = lm_choice[k]
    all_outs = {
        "lm_base": lm_all,
        "neko_raw": preds.generated,
        "neko_constrained": preds.constrained or preds.generated,
        "neko_rescore": preds.rescored,
        "neko": preds.final,
    }
    # The main table scores seen conditions; held-out ones appear in the per-domain ASR table only.
    main_nb = [i for i in nbest if not seen[i].meta.get("zeroshot")]
    report: dict[str, Any] = {}
    for idx, systems in (
        (main_nb, ("lm_base", "neko_raw", "neko_constrained", "neko_rescore", "neko")),
        (text, ("neko_raw", "neko")),
    ):
        if not idx:
            continue
        outs = {k: [all_outs[k][i] for i in idx] for k in systems}
        part = score_system_outputs([seen[i] for i in idx], outs, seed=cfg.seed)
        report = part if not report else {**report, "tasks": {**report["tasks"], **part["tasks"]}}
    asr_idx = [i for i, e in enumerate(seen) if e.task == "asr"]
    if asr_idx:
        asr_rows = [seen[i] for i in asr_idx]
        outs = {k: [all_outs[k][i] for i in asr_idx] for k in all_outs}
        report["asr_groups"] = {
            by: score_system_outputs(asr_rows, outs, seed=cfg.seed, group_by=by)["tasks"]["asr"]["groups"]
            for by in ("domain", "domain,condition")
        }
    write_predictions(out / "test_predictions.jsonl", seen, _prediction_columns(preds, lm_all))
    typo_report = None
    if unseen:
        zero = predict(model_dir, unseen, cfg.eval, mode=mode, guard=guard, all_outputs=True)
        five = predict(
            model_dir,
            unseen,
            cfg.eval,
            fewshot_pool=dev,
            fewshot_k=cfg.eval.fewshot_k,
            mode=mode,
            guard=guard,
            all_outputs=True,
        )
        typo_report = score_system_outputs(
            unseen,
            {
                "neko_raw_0shot": zero.generated,
                "neko_raw_5shot": five.generated,
                "neko_0shot": zero.final,
                "neko_5shot": five.final,
            },
            seed=cfg.seed,
        )
    return report, typo_report, lm_settings


def _prediction_columns(preds: Predictions, lm_base: list[str]) -> dict[str, list[str]]:
    """Every test output with what the policy used for it; re-score every system of the table with
    `neko eval --pred test_predictions.jsonl --systems prediction,prediction_generated,
    prediction_rescored,prediction_constrained,prediction_lm_base`."""
    return {
        "prediction": preds.final,
        "prediction_generated": preds.generated,
        "prediction_rescored": preds.rescored,
        "prediction_constrained": preds.constrained or preds.generated,
        "prediction_lm_base": lm_base,
        "used": preds.used,
    }


def _report(
    cfg: QuickstartConfig,
    out: Path,
    model_dir: Path,
    result: TrainResult,
    policy_info: dict[str, Any] | None,
    report: dict[str, Any],
    typo_report: dict[str, Any] | None,
    lm_settings: dict[str, Any],
    n_rows: int,
    console: Console,
) -> dict[str, Any]:
    systems = ["lm_base", "neko_raw", "neko_constrained", "neko_rescore", "neko"]
    asr_groups = report.pop("asr_groups", None)
    header, table_rows = results_rows(
        report,
        systems,
        SYSTEM_LABELS,
        typo_report,
        {"neko_raw": ("neko_raw_0shot", "neko_raw_5shot"), "neko": ("neko_0shot", "neko_5shot")},
    )
    machine = "GPU" if cfg.gpu else "CPU"
    title = (
        f"neko quickstart on {machine} (decoded in {cfg.eval.dtype}): {n_rows} test rows ({cfg.eval.rows_per_task or 'all'} per task), "
        f"WER/CER % (lower is better), BLEU (higher is better), normalizer {report['normalizer']['name']}"
    )
    for line in compact_summary(report, typo_report, SYSTEM_LABELS):
        console.print(line, highlight=False, soft_wrap=True)
    asr_markdown = ""
    if asr_groups:
        parts = []
        for by, title in (
            ("domain", "recognizer domain"),
            ("domain,condition", "recognizer domain and condition"),
        ):
            h, r = groups_table({"groups": asr_groups[by]}, systems, SYSTEM_LABELS)
            parts.append(
                f"ASR by {title}, WER % (the main table's ASR column pools the seen domains):\n\n{to_markdown(h, r)}"
            )
            if by == "domain":
                for line in compact_groups(asr_groups[by]):
                    console.print(line, highlight=False, soft_wrap=True)
        asr_markdown = "\n\n" + "\n\n".join(parts)
    heatmap = None
    try:
        _, heatmap, _ = routing_report_from_dir(
            model_dir, Path(cfg.data_dir) / "test.jsonl", out / "routing", max_rows=cfg.routing_rows
        )
    except Exception as e:  # the routing picture is a bonus: never lose the results over it
        console.print(f"[yellow]routing report skipped: {e}")
    markdown = to_markdown(header, table_rows) + asr_markdown
    atomic_write_text(out / "results.md", f"{title}\n\n{markdown}")
    return {
        "policy": policy_info,
        "lm_rescoring": lm_settings,
        "config": asdict(cfg),
        "machine": machine,
        "train": asdict(result),
        "eval_rows": n_rows,
        "report": report,
        "asr_groups": asr_groups,
        "typo_report": typo_report,
        "table_markdown": markdown,
        "routing_heatmap": str(heatmap) if heatmap else None,
    }
