"""``neko quickstart``: the main job end to end on the shipped benchmark.

base (SmolLM2-135M-Instruct, from a PyPI wheel) -> up-cycled 8-expert top-2 MoE -> task-guided
training on the benchmark's train split -> correction of the test splits -> the results table
(1-best, ROVER, oracles, NeKo with and without the no-harm guard, harm rate, bootstrap CIs) -> a model directory that
``neko correct`` uses right after, and the task x expert routing heatmap.

Budget (stated, not hidden): on the 2-core CPU, the whole run must fit in about 15 minutes, so
training stops at ``train_time_s`` (default 8 minutes: a few hundred examples, a fraction of one
epoch) and only ``rows_per_task`` test rows per task are decoded. With a GPU the defaults switch to
the paper's recipe scale for this data (bf16, longer training, every test row). Everything a run
decides is written into ``quickstart.json`` next to the results.
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
from neko.paths import BENCHMARK_DIR

__all__ = ["QuickstartConfig", "run_quickstart", "has_gpu"]


def has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False


@dataclass
class QuickstartConfig:
    """base: offline base name, model directory or ``tiny:llama`` (tests).
    moe_layers: layers made MoE (None = the device default: every layer on a GPU, the paper's
    layout; on CPU ``cpu_moe_layers``, the last 6 of SmolLM2's 30, which trains 2.3x faster than
    all-layer MoE on 2 cores (115 vs 51 tokens/s measured) and so sees 2.3x more data in the budget). train_time_s / max_steps: training budget (0 = unlimited / epochs).
    gpu: None = auto-detect; True/False forces the budget profile."""

    base: str = "smollm2"
    output_dir: str = "runs/quickstart"
    data_dir: str = str(BENCHMARK_DIR)
    num_experts: int = 8
    top_k: int = 2
    moe_layers: list[int] | None = None
    cpu_moe_layers: tuple[int, ...] = (24, 25, 26, 27, 28, 29)
    lr: float = 2e-4
    epochs: int = 1
    micro_batch_size: int = 4
    max_seq_len: int = 384
    train_time_s: float = 480.0
    max_steps: int = 0
    routing_rows: int = 48
    # The no-harm guard's thresholds are tuned on this many dev rows per task (0 = untuned defaults),
    # capping the dev harm rate at guard_max_harm: the paper's targets include harm <= 10% on ASR.
    guard_dev_rows: int = 24
    guard_max_harm: float = 0.10
    seed: int = 0
    gpu: bool | None = None
    eval: EvalPlan = field(default_factory=EvalPlan)

    def for_device(self) -> QuickstartConfig:
        """The GPU profile: more training (3 epochs, no time cap), bf16, every test row."""
        from dataclasses import replace

        gpu = has_gpu() if self.gpu is None else self.gpu
        if not gpu:
            if self.moe_layers is None and self.base == "smollm2":
                return replace(self, gpu=False, moe_layers=list(self.cpu_moe_layers))
            return replace(self, gpu=False)

        return replace(
            self,
            gpu=True,
            epochs=3,
            train_time_s=0.0 if self.train_time_s == QuickstartConfig.train_time_s else self.train_time_s,
            micro_batch_size=16,
            lr=1e-4,
            guard_dev_rows=100
            if self.guard_dev_rows == QuickstartConfig.guard_dev_rows
            else self.guard_dev_rows,
            eval=replace(self.eval, rows_per_task=0, batch_size=64),
        )


def _train_config(cfg: QuickstartConfig, out: Path, mode: str = "neko", **over: Any):
    from neko.train.config import DataConfig, DataSource, ModelConfig, OptimConfig, TrainConfig, UpcycleConfig

    data = Path(cfg.data_dir)
    tc = TrainConfig(
        mode=mode,
        model=ModelConfig(base=cfg.base),
        upcycle=UpcycleConfig(num_experts=cfg.num_experts, top_k=cfg.top_k, moe_layers=cfg.moe_layers),
        data=DataConfig(
            train=[DataSource(path=str(data / "train.jsonl"))],
            max_seq_len=cfg.max_seq_len,
        ),
        optim=OptimConfig(lr=cfg.lr, epochs=cfg.epochs),
        max_steps=cfg.max_steps,
        time_budget_s=cfg.train_time_s,
        seed=cfg.seed,
        output_dir=str(out),
        precision="bf16" if cfg.gpu else "fp32",
    )
    tc.batch.micro_batch_size = cfg.micro_batch_size
    for k, v in over.items():
        setattr(tc, k, v)
    return tc


def run_quickstart(cfg: QuickstartConfig | None = None, console: Any = None) -> dict[str, Any]:
    """Train, evaluate and report; returns the summary dict also written to ``quickstart.json``."""
    from rich.console import Console

    from neko.experiment.report import print_table, results_rows, to_markdown
    from neko.io import atomic_write_json, atomic_write_text
    from neko.train.api import train

    console = console or Console()
    cfg = (cfg or QuickstartConfig()).for_device()
    out = Path(cfg.output_dir)
    data = Path(cfg.data_dir)
    for split in ("train", "dev", "test"):
        if not (data / f"{split}.jsonl").exists():
            raise FileNotFoundError(
                f"{data / (split + '.jsonl')}: benchmark split missing; run `neko data build --out {data}`"
            )
    t0 = time.time()
    console.rule("[bold]neko quickstart")
    console.print(
        f"base={cfg.base} experts={cfg.num_experts} top-k={cfg.top_k} moe_layers={cfg.moe_layers or 'all'} "
        f"device={'GPU' if cfg.gpu else 'CPU'} train budget="
        f"{f'{cfg.train_time_s:.0f}s' if cfg.train_time_s else f'{cfg.epochs} epoch(s)'}"
    )

    console.rule("1/3 train (task-guided MoE)")
    model_dir = out / "model"
    # Rerunning the quick start means "run it again": resume a stopped run, else replace the model.
    result = train(_train_config(cfg, model_dir), resume=(model_dir / "checkpoints").exists(), overwrite=True)
    console.print(
        f"trained {result.steps}/{result.total_steps} steps ({result.stop_reason}), "
        f"{result.tokens} tokens at {result.tokens_per_s:.0f} tok/s, final loss {result.final_loss}"
    )

    dev = load_split(data / "dev.jsonl")
    guard_info = None
    if cfg.guard_dev_rows > 0:
        console.rule("tune the no-harm guard on dev")
        guard_info = _tune_guard_on_dev(cfg, model_dir, dev, out)
        console.print(f"guard thresholds (dev, harm <= {cfg.guard_max_harm:.0%}): {guard_info['thresholds']}")

    console.rule("2/3 correct the test splits")
    test = load_split(data / "test.jsonl")
    rows = subsample(test, cfg.eval.rows_per_task, cfg.eval.seed)
    seen = [e for e in rows if e.task not in UNSEEN_TASKS]
    unseen = [e for e in rows if e.task in UNSEEN_TASKS]
    device = "auto"
    guarded, raw = predict(model_dir, seen, cfg.eval, device=device, guard=True)
    report = score_system_outputs(seen, {"neko": raw, "neko_guard": guarded}, seed=cfg.seed)
    typo_report = None
    if unseen:
        zero_g, zero = predict(model_dir, unseen, cfg.eval, device=device, guard=True)
        five_g, five = predict(
            model_dir,
            unseen,
            cfg.eval,
            fewshot_pool=dev,
            fewshot_k=cfg.eval.fewshot_k,
            device=device,
            guard=True,
        )
        typo_report = score_system_outputs(
            unseen,
            {"neko_0shot": zero, "neko_5shot": five, "neko_guard_0shot": zero_g, "neko_guard_5shot": five_g},
            seed=cfg.seed,
        )

    console.rule("3/3 report")
    header, table_rows = results_rows(
        report,
        ["neko", "neko_guard"],
        {
            "neko": "NeKo (ours)",
            "neko_guard": "NeKo + no-harm guard" + (" (dev-tuned)" if guard_info else ""),
        },
        typo_report,
        {"neko": ("neko_0shot", "neko_5shot"), "neko_guard": ("neko_guard_0shot", "neko_guard_5shot")},
    )
    machine = "GPU" if cfg.gpu else "CPU"
    title = (
        f"neko quickstart on {machine}: {len(seen)} test rows ({cfg.eval.rows_per_task or 'all'} per task), "
        f"WER/CER % (lower is better), BLEU (higher is better), normalizer {report['normalizer']['name']}"
    )
    print_table(header, table_rows, title, console)
    heatmap = None
    try:
        from neko.model.stats import routing_report_from_dir

        _, heatmap, _ = routing_report_from_dir(
            model_dir, data / "test.jsonl", out / "routing", max_rows=cfg.routing_rows
        )
    except Exception as e:  # the routing picture is a bonus: never lose the results over it
        console.print(f"[yellow]routing report skipped: {e}")
    summary = {
        "guard": guard_info,
        "config": asdict(cfg),
        "machine": machine,
        "train": asdict(result),
        "eval_rows": len(rows),
        "report": report,
        "typo_report": typo_report,
        "table_markdown": to_markdown(header, table_rows),
        "routing_heatmap": str(heatmap) if heatmap else None,
        "elapsed_s": round(time.time() - t0, 1),
    }
    atomic_write_json(out / "quickstart.json", summary)
    atomic_write_text(out / "results.md", f"{title}\n\n{summary['table_markdown']}")
    console.print(
        f"done in {summary['elapsed_s']:.0f}s. Model: {model_dir} (try `neko correct --model {model_dir} "
        f"--input data/samples/... --output out.jsonl`); results: {out / 'results.md'}"
    )
    return summary


def _tune_guard_on_dev(cfg: QuickstartConfig, model_dir: Path, dev: list[Any], out: Path) -> dict[str, Any]:
    """Decode a dev subset without the guard, tune its thresholds there, save them beside the model
    (so `neko correct` applies them by default too). Test rows are never looked at."""
    import json

    from neko.infer.files import correct_file
    from neko.infer.guard import save_guard, tune_guard
    from neko.infer.options import CorrectionOptions
    from neko.io import atomic_write_text

    rows = [e for e in subsample(dev, cfg.guard_dev_rows, cfg.eval.seed) if e.task not in UNSEEN_TASKS]
    src, pred = out / "guard_dev.jsonl", out / "guard_dev_predictions.jsonl"
    atomic_write_text(src, "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in rows))
    opts = CorrectionOptions(
        max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size, guard="off"
    )
    # overwrite: the model was just retrained in place, so earlier predictions belong to another model
    correct_file(model_dir, src, pred, options=opts, details=True, overwrite=True)
    preds = [json.loads(line) for line in pred.read_text(encoding="utf-8").splitlines() if line.strip()]
    guard = tune_guard(preds, max_harm_rate=cfg.guard_max_harm, min_task_rows=min(30, cfg.guard_dev_rows))
    save_guard(model_dir, guard)
    d = guard.to_dict()
    return {
        "dev_rows": len(rows),
        "max_harm_rate": cfg.guard_max_harm,
        "thresholds": {"default": d["default"], **d.get("per_task", {})},
        "report": d.get("report", {}),
    }
