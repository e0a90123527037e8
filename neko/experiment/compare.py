"""``neko experiment``: the paper's comparison at equal training budget on the same data.

Systems (all from the same base, the same train split, the same number of optimizer steps of the
same batch size, i.e. the same training tokens):
- ``dense``: full fine-tune of the dense base.
- ``moe``: the up-cycled MoE fine-tuned with plain top-K routing (the paper's "MoE FFT").
- ``lora``: PEFT LoRA on the up-cycled MoE with task-guided routing (the paper compares LoRA with
  full fine-tuning on the MoE setup); router and experts stay frozen, only adapters train.
- ``btx``: Branch-Train-MiX: one dense branch per task (half the budget, split evenly), merged
  into an MoE with one expert per task (``neko.model.btx``), then fine-tuned with plain routing
  for the other half.
- ``neko``: the up-cycled MoE with task-guided routing (ours).
and at inference, NeKo with top-1 / top-2 / top-3 routing.

``reduced`` (CPU, the default) trains each system for 48 steps and scores 60 test rows per task
(about 75 minutes on 2 cores; the README's block): it shows the direction, not the paper's numbers. ``full`` is sized for one
GPU (see scripts/gpu_experiment.sh). Whatever comes out is reported as measured.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from neko.experiment.evaluate import (
    UNSEEN_TASKS,
    EvalPlan,
    load_split,
    predict,
    score_system_outputs,
    subsample,
)
from neko.experiment.quickstart import QuickstartConfig, _train_config
from neko.paths import BENCHMARK_DIR

__all__ = ["ExperimentConfig", "run_experiment", "experiment_markdown", "SYSTEMS", "PROFILES"]

SYSTEMS = ("dense", "moe", "lora", "btx", "neko")
LABELS = {
    "dense": "dense FFT",
    "moe": "MoE FFT (no task guidance)",
    "lora": "NeKo + LoRA",
    "btx": "Branch-Train-MiX",
    "neko": "NeKo (ours)",
    "neko_top1": "NeKo, top-1 inference",
    "neko_top3": "NeKo, top-3 inference",
}


@dataclass
class ExperimentConfig:
    """steps: optimizer steps per system (the equal budget). systems: which to train.
    inference_top_k: extra NeKo inference settings scored beside the default top-2."""

    base: str = "smollm2"
    output_dir: str = "runs/experiment"
    data_dir: str = str(BENCHMARK_DIR)
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    steps: int = 24
    num_experts: int = 8
    top_k: int = 2
    moe_layers: str | list[int] | None = None
    lr: float = 2e-4
    micro_batch_size: int = 4
    max_seq_len: int = 384
    inference_top_k: list[int] = field(default_factory=lambda: [1, 3])
    precision: str = "fp32"
    seed: int = 0
    eval: EvalPlan = field(default_factory=lambda: EvalPlan(rows_per_task=16))

    def __post_init__(self) -> None:
        bad = [s for s in self.systems if s not in SYSTEMS]
        if bad:
            raise ValueError(f"unknown system(s) {bad}; choose from {', '.join(SYSTEMS)}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


PROFILES: dict[str, dict[str, Any]] = {
    # 2-core CPU, the run in the README: about 10 minutes of training per system, 15 of decoding.
    # The SmolLM2 base gets only its last 6 layers made MoE here (see ``CPU_MOE_LAYERS``).
    "reduced": {"steps": 48, "eval": EvalPlan(rows_per_task=60)},
    # One H100, about 15 minutes for everything (bf16, larger batches, every test row).
    "full": {
        "steps": 300,
        "micro_batch_size": 16,
        "lr": 1e-4,
        "precision": "bf16",
        "eval": EvalPlan(rows_per_task=0, batch_size=64),
    },
}


# Layers made MoE by the reduced profile on the default base (as in the quick start on CPU: all-layer
# MoE trains 2.3x slower on 2 cores).
CPU_MOE_LAYERS = list(QuickstartConfig.cpu_moe_layers)


def _qs(cfg: ExperimentConfig) -> QuickstartConfig:
    return QuickstartConfig(
        base=cfg.base,
        data_dir=cfg.data_dir,
        num_experts=cfg.num_experts,
        top_k=cfg.top_k,
        moe_layers=cfg.moe_layers,
        lr=cfg.lr,
        epochs=1,
        micro_batch_size=cfg.micro_batch_size,
        max_seq_len=cfg.max_seq_len,
        train_time_s=0.0,
        steps=cfg.steps,
        seed=cfg.seed,
        gpu=cfg.precision != "fp32",
    )


def _finished(out: Path, tc: Any) -> bool:
    """True when ``out`` already holds a model trained to the end with exactly this config.

    A rerun after an interruption then skips the systems that were done (each takes many minutes on
    CPU) instead of training them again or failing on a non-empty directory."""
    import json

    import yaml

    from neko.train.config import config_to_dict
    from neko.train.export import SUMMARY_FILE

    summary, saved = out / SUMMARY_FILE, out / "train_config.yaml"
    if not (summary.is_file() and saved.is_file()):
        return False
    base_cfg = Path(tc.model.base) / "config.json"
    if base_cfg.is_file() and base_cfg.stat().st_mtime_ns > summary.stat().st_mtime_ns:
        return False  # trained from a local base (BTX's merge) that has been rebuilt since
    want = yaml.safe_load(yaml.safe_dump(config_to_dict(tc), sort_keys=False))
    done = json.loads(summary.read_text(encoding="utf-8")).get("stop_reason") in ("completed", "max_steps")
    return done and yaml.safe_load(saved.read_text(encoding="utf-8")) == want


def _train(cfg: ExperimentConfig, out: Path, mode: str, steps: int, **data_over: Any) -> Path:
    from neko.train.api import train

    tc = _train_config(_qs(cfg), out, mode=mode, max_steps=steps)
    for k, v in data_over.items():
        setattr(tc.data, k, v)
    if mode == "lora":
        tc.lora.base_mode = "neko"
    if _finished(out, tc):
        print(f"{out}: already trained with this config; reusing it")
        return out
    # A model here from another config is a previous experiment's: this run replaces it.
    train(tc, resume=(out / "checkpoints").exists(), overwrite=True)
    return out


def _btx(cfg: ExperimentConfig, out: Path, tasks: list[str], console: Any) -> Path:
    """Branch (dense, one per task) -> merge (one expert per task) -> MiX (plain-routing fine-tune)."""
    import shutil

    from neko.model.btx import btx_merge
    from neko.train.export import SUMMARY_FILE

    branch_steps = max(1, cfg.steps // (2 * len(tasks)))
    branches = []
    for t in tasks:
        console.print(f"btx: branch {t} ({branch_steps} steps)")
        branches.append(_train(cfg, out / "branches" / t, "dense", branch_steps, tasks=[t]))
    merged = out / "merged"
    merged_cfg = merged / "config.json"
    if merged_cfg.exists() and any(
        (b / SUMMARY_FILE).stat().st_mtime_ns > merged_cfg.stat().st_mtime_ns for b in branches
    ):
        shutil.rmtree(merged)  # a branch was retrained: merge again
    if not merged_cfg.exists():
        btx_merge(
            [str(b) for b in branches],
            out_dir=merged,
            num_experts_per_tok=cfg.top_k,
            seed=cfg.seed,
            # Same MoE layers as the other MoE systems, so the comparison differs only in method.
            moe_layers=cfg.moe_layers,
        )
    mix_cfg = ExperimentConfig(**{**asdict(cfg), "base": str(merged), "eval": cfg.eval})
    return _train(mix_cfg, out / "mix", "moe", max(1, cfg.steps - branch_steps * len(tasks)))


def run_experiment(cfg: ExperimentConfig, console: Any = None) -> dict[str, Any]:
    """Train every system at the same budget, score all on the same test rows, report."""
    from rich.console import Console

    from neko.experiment.report import (
        average_summary,
        averages_table,
        pairs_table,
        print_table,
        results_rows,
        to_markdown,
    )
    from neko.io import atomic_write_json, atomic_write_text

    console = console or Console()
    t0 = time.time()
    out = Path(cfg.output_dir)
    data = Path(cfg.data_dir)
    train_rows = load_split(data / "train.jsonl")
    tasks = sorted({e.task for e in train_rows if e.task not in UNSEEN_TASKS})
    test = [e for e in subsample(load_split(data / "test.jsonl"), cfg.eval.rows_per_task, cfg.eval.seed)]
    test = [e for e in test if e.task not in UNSEEN_TASKS]
    model_dirs: dict[str, Path] = {}
    timings: dict[str, float] = {}
    for name in cfg.systems:
        console.rule(f"train {LABELS[name]} ({cfg.steps} steps)")
        if name == "btx":
            model_dirs[name] = _btx(cfg, out / "btx", tasks, console)
        else:
            model_dirs[name] = _train(cfg, out / name, name, cfg.steps)
        timings[name] = _train_seconds(out / name)
    outputs: dict[str, list[str]] = {}
    for name, mdir in model_dirs.items():
        console.rule(f"correct with {LABELS[name]}")
        outputs[name] = _predict_cached(out, name, mdir, test, cfg.eval, 2)
        if name == "neko":
            for k in cfg.inference_top_k:
                outputs[f"neko_top{k}"] = _predict_cached(out, f"neko_top{k}", mdir, test, cfg.eval, k)
    _write_predictions(out / "predictions.jsonl", test, outputs)
    # Head to head on the same rows: does task guidance beat each other system?
    pairs = [("neko", n) for n in model_dirs if n != "neko"] if "neko" in outputs else []
    report = score_system_outputs(test, outputs, seed=cfg.seed, pairs=pairs)
    systems = list(outputs)
    header, rows = results_rows(report, systems, LABELS)
    title = f"neko experiment: {cfg.steps} optimizer steps per system, {len(test)} test rows, precision {cfg.precision}"
    print_table(header, rows, title, console)
    averages = average_summary(report, systems)
    summary = {
        "config": asdict(cfg),
        "report": report,
        "averages": averages,
        "train_seconds": timings,
        "decode_seconds": _decode_seconds(out, outputs),
        "table_markdown": to_markdown(header, rows),
        "elapsed_s": round(time.time() - t0, 1),
    }
    atomic_write_json(out / "experiment.json", summary)
    atomic_write_text(out / "results.md", f"{title}\n\n{experiment_markdown(summary)}")
    print_table(*averages_table(averages, LABELS), "averages over tasks", console)
    if pairs:
        print_table(*pairs_table(report, LABELS), "head to head (paired bootstrap, 95% CI)", console)
    return summary


def experiment_markdown(summary: dict[str, Any]) -> str:
    """The three tables of a run (results, averages over tasks, head to head) as markdown."""
    from neko.experiment.report import averages_table, pairs_table, to_markdown

    parts = [summary["table_markdown"]]
    parts.append(
        "Averages over tasks (WER tasks unweighted; MT separately):\n\n"
        + to_markdown(*averages_table(summary["averages"], LABELS))
    )
    header, rows = pairs_table(summary["report"], LABELS)
    if rows:
        parts.append(
            "Head to head on the same rows (paired bootstrap, 95% CI; WER in points, negative = fewer "
            "errors; BLEU in points, positive = better):\n\n" + to_markdown(header, rows)
        )
    return "\n\n".join(parts)


def _train_seconds(run_dir: Path) -> float:
    """Training time of a system as its runs recorded it (BTX: branches + mix), so a rerun that
    reuses finished systems still reports what they cost."""
    import json

    from neko.train.export import SUMMARY_FILE

    files = (
        [run_dir / SUMMARY_FILE]
        if (run_dir / SUMMARY_FILE).is_file()
        else sorted(run_dir.rglob(SUMMARY_FILE))
    )
    return round(
        sum(float(json.loads(f.read_text(encoding="utf-8")).get("elapsed_s", 0.0)) for f in files), 1
    )


def command_line(config: dict[str, Any]) -> str:
    """The ``neko experiment`` call that reproduces a run (from its saved config)."""
    default = ExperimentConfig()
    parts = ["neko experiment"]
    if config.get("precision", "fp32") != "fp32":
        parts.append("--profile full")
    parts.append(f"--steps {config['steps']}")
    rows = (config.get("eval") or {}).get("rows_per_task")
    if rows is not None:
        parts.append(f"--rows-per-task {rows}")
    layers = config.get("moe_layers")
    if isinstance(layers, str):
        parts.append(f"--moe-layers {layers}")
    elif layers:
        lo, hi = min(layers), max(layers)
        parts.append(
            f"--moe-layers {lo}-{hi}"
            if list(layers) == list(range(lo, hi + 1))
            else f"--moe-layers {','.join(map(str, layers))}"
        )
    if list(config.get("systems", default.systems)) != list(default.systems):
        parts.append(f"--systems {','.join(config['systems'])}")
    if config.get("data_dir", default.data_dir) != default.data_dir:
        parts.append(f"--data-dir {config['data_dir']}")
    if config.get("base", default.base) != default.base:
        parts.append(f"--base {config['base']}")
    return " ".join(parts)


def _decode_seconds(out: Path, outputs: dict[str, list[str]]) -> float:
    """Decoding time of every output as recorded when it was decoded (cached ones included)."""
    import json

    total = 0.0
    for name in outputs:
        f = out / "outputs" / f"{name}.json"
        if f.is_file():
            total += float(json.loads(f.read_text(encoding="utf-8")).get("seconds", 0.0))
    return round(total, 3)


def _model_stamp(model_dir: Path) -> str:
    import hashlib

    from neko.train.export import SUMMARY_FILE

    f = Path(model_dir) / SUMMARY_FILE
    return hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else ""


def _predict_cached(
    out: Path, key: str, model_dir: Path, test: list[Any], plan: EvalPlan, top_k: int
) -> list[str]:
    """Decode once per (model, rows, plan, top-K): a rerun (e.g. after adding a system) re-scores
    without re-decoding, which is most of a CPU run's evaluation time."""
    import json

    from neko.io import atomic_write_json

    want = {
        "model": _model_stamp(model_dir),
        "ids": [e.id for e in test],
        "plan": asdict(plan),
        "top_k": top_k,
    }
    path = out / "outputs" / f"{key}.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            saved = {}
        if {k: saved.get(k) for k in want} == want and len(saved.get("outputs", [])) == len(test):
            return saved["outputs"]
    t0 = time.time()
    texts = predict(model_dir, test, plan, top_k_experts=top_k).final
    atomic_write_json(path, {**want, "seconds": round(time.time() - t0, 3), "outputs": texts}, indent=None)
    return texts


def _write_predictions(path: Path, test: list[Any], outputs: dict[str, list[str]]) -> None:
    """One JSONL row per test example, each system's output in a field of its name (re-score with
    ``neko eval --pred predictions.jsonl --systems neko,moe,...``)."""
    import json

    from neko.io import atomic_write_text

    lines = []
    for i, e in enumerate(test):
        row = e.to_dict()
        row.update({name: texts[i] for name, texts in outputs.items()})
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + "\n")
