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
- ``single``: one dense model per task, trained on that task alone and scored on it (the paper's
  Table 5 "directly fine-tuned" model); the models together get one system's budget, split evenly.
- ``moe_lb`` / ``neko_lb``: the MoE pair again with the same standard load-balancing loss (ablation).
Load balancing: the paper names no auxiliary loss, so ``moe`` and ``neko`` train with none
(``aux_loss="off"``), the same for both; ``*_lb`` adds the same Switch loss to both.

Evaluation (every system decodes the same rows, greedily, with plain generation: no correction
policy, no guard; each row's token limit from its input length; top-K = the model's own):
the seen tasks' test rows (Tables 2/3/5), the unseen typo task 0-shot and 5-shot (Table 6), and
``test_zeroshot.jsonl`` (held-out ASR voices, Table 1; held-out MT pivot languages, Table 4).
NeKo is also decoded with top-1/top-3 routing, and compared head to head with every other system
(paired bootstrap on the same rows). :mod:`neko.experiment.tables` renders the tables.

Profiles. ``reduced`` (2-core CPU): the central ablation (dense FFT, MoE FFT, NeKo) at 144 steps x 4
packed rows of <= 384 tokens (3x the 48 steps of the earlier README run), every layer trained, the
last 6 of SmolLM2's 30 layers MoE; 100 test rows per task (typo: 100 rows, 0- and 5-shot) and the
200 zero-shot rows: 900 decodes per system, no extra top-K decodes. Estimated from measured speeds
(``CPU_SECONDS_PER_STEP``, bench/NOTES.md "experiment"): training 144 x (10.8 + 12.9 + 13.7) s
~ 90 min, decoding 2,700 rows x 0.43 s ~ 19 min, loading and saving ~3 min: about 1.9 h on a quiet
2-core machine (under other jobs' load it takes correspondingly longer). The constants are the
conservative end: the run of 2026-12-02 took 69 min (7.9-8.2 s per step, 0.26 s per decoded row;
bench/NOTES.md), and the slower 2-core machine kind runs about half as fast. Add systems with
``--systems`` (each ~30-40 min more). ``full`` (one GPU): every system, 300 steps x 16 rows, bf16,
every test row (scripts/gpu_experiment.sh); not yet timed on a GPU. Whatever comes out is reported
as measured.
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

__all__ = [
    "ExperimentConfig",
    "run_experiment",
    "experiment_markdown",
    "command_line",
    "system_labels",
    "estimate_seconds",
    "SYSTEMS",
    "PROFILES",
    "CPU_MOE_LAYERS",
    "ZEROSHOT_FILE",
]

SYSTEMS = ("dense", "moe", "neko", "lora", "btx", "single", "moe_lb", "neko_lb")
CORE_SYSTEMS = ("dense", "moe", "neko")
ZEROSHOT_FILE = "test_zeroshot.jsonl"
# The LoRA baseline's adapters: attention and FFN projections (nn.Linear), and the experts' 3-D tensors.
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_PARAMETERS = ("experts.gate_up_proj", "experts.down_proj")
# Layers made MoE by the reduced profile on the default base: all-layer MoE trains 2.3x slower on 2 cores.
CPU_MOE_LAYERS = list(range(24, 30))
AUX_LOSSES = ("off", "standard", "free")

# Seconds per optimizer step of 4 packed rows of <= 384 tokens on a quiet 2-core CPU, and per decoded
# row (bench/NOTES.md "experiment"): dense and MoE FFT from the 48-step run of 2026-11-27 (its own
# neko_train.json times less ~30 s of loading/saving), NeKo = MoE x 1.06 (the task-guided hook's
# worst measured overhead, bench_routing.py), LoRA = dense x 1.11 (bench_experiment.py, same load).
CPU_SECONDS_PER_STEP = {"dense": 10.8, "single": 10.8, "moe": 12.9, "neko": 13.7, "lora": 12.0}
CPU_SECONDS_PER_ROW = 0.43


@dataclass
class ExperimentConfig:
    """steps: optimizer steps per system (the equal budget) of micro_batch_size packed rows of
    max_seq_len tokens. systems: which to train (see the module docstring). aux_loss / aux_coef: the
    load-balancing loss of both MoE systems (the ``*_lb`` pair always uses "standard" with aux_coef).
    btx_branch_share: share of BTX's budget spent on its task branches. inference_top_k: extra NeKo
    inference settings scored beside the model's own. zeroshot: also score test_zeroshot.jsonl when
    the data directory has it."""

    base: str = "smollm2"
    output_dir: str = "runs/experiment"
    data_dir: str = str(BENCHMARK_DIR)
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    steps: int = 144
    num_experts: int = 8
    top_k: int = 2
    moe_layers: str | list[int] | None = None
    lr: float = 2e-4
    micro_batch_size: int = 4
    max_seq_len: int = 384
    aux_loss: str = "off"
    aux_coef: float = 0.01
    lora_r: int = 16
    btx_branch_share: float = 0.5
    inference_top_k: list[int] = field(default_factory=lambda: [1, 3])
    zeroshot: bool = True
    precision: str = "fp32"
    seed: int = 0
    eval: EvalPlan = field(default_factory=lambda: EvalPlan(rows_per_task=100))

    def __post_init__(self) -> None:
        bad = [s for s in self.systems if s not in SYSTEMS]
        if bad:
            raise ValueError(f"unknown system(s) {bad}; choose from {', '.join(SYSTEMS)}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.aux_loss not in AUX_LOSSES:
            raise ValueError(f"aux_loss must be one of {', '.join(AUX_LOSSES)}, got {self.aux_loss!r}")
        if not 0 < self.btx_branch_share < 1:
            raise ValueError(f"btx_branch_share must be in (0, 1), got {self.btx_branch_share}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be in 1..num_experts ({self.num_experts}), got {self.top_k}")
        bad_k = [k for k in self.inference_top_k if not 1 <= k <= self.num_experts]
        if bad_k:  # checked now: it would otherwise fail after hours of training, at decoding
            raise ValueError(f"inference top-K {bad_k} outside 1..num_experts ({self.num_experts})")


PROFILES: dict[str, dict[str, Any]] = {
    # 2-core CPU, about 1.9 h (module docstring): the central ablation at 3x the earlier budget.
    "reduced": {
        "steps": 144,
        "systems": list(CORE_SYSTEMS),
        "inference_top_k": [],
        "eval": EvalPlan(rows_per_task=100),
    },
    # One GPU: every system, every test row.
    "full": {
        "steps": 300,
        "micro_batch_size": 16,
        "lr": 1e-4,
        "precision": "bf16",
        "eval": EvalPlan(rows_per_task=0, batch_size=64),
    },
}


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
        "single": "single-task dense FFT (each task's own model)",
        "moe_lb": f"MoE FFT + standard balance loss {cfg.aux_coef:g}",
        "neko_lb": f"NeKo + standard balance loss {cfg.aux_coef:g}",
        **{f"neko_top{i}": f"NeKo, top-{i} inference" for i in range(1, e + 1)},
    }


def _train_config(
    cfg: ExperimentConfig,
    out: Path,
    mode: str,
    steps: int,
    *,
    tasks: list[str] | None = None,
    aux_loss: str | None = None,
    base: str | None = None,
) -> Any:
    """The training recipe every system shares; only the mode (and BTX's / single's data) differ."""
    from neko.train.config import (
        DataConfig,
        DataSource,
        LoraConfig,
        ModelConfig,
        OptimConfig,
        RoutingConfig,
        TrainConfig,
        UpcycleConfig,
    )

    tc = TrainConfig(
        mode=mode,
        model=ModelConfig(base=base or cfg.base),
        upcycle=UpcycleConfig(num_experts=cfg.num_experts, top_k=cfg.top_k, moe_layers=cfg.moe_layers),
        data=DataConfig(
            train=[DataSource(path=str(Path(cfg.data_dir) / "train.jsonl"))],
            max_seq_len=cfg.max_seq_len,
            tasks=list(tasks or []),
        ),
        optim=OptimConfig(lr=cfg.lr, epochs=1),
        routing=RoutingConfig(aux_loss=aux_loss or cfg.aux_loss, aux_coef=cfg.aux_coef),
        max_steps=steps,
        seed=cfg.seed,
        output_dir=str(out),
        precision=cfg.precision,
    )
    tc.batch.micro_batch_size = cfg.micro_batch_size
    if mode == "lora":
        tc.lora = LoraConfig(
            r=cfg.lora_r,
            alpha=2 * cfg.lora_r,
            dropout=0.0,  # PEFT's parameter (expert) adapters take no dropout; none anywhere, alike
            target_modules=list(LORA_MODULES),
            target_parameters=list(LORA_PARAMETERS),
            modules_to_save=["mlp.gate"],
            base_mode="moe",
        )
    return tc


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


def _train(cfg: ExperimentConfig, out: Path, mode: str, steps: int, **kw: Any) -> Path:
    from neko.train.loop import train

    tc = _train_config(cfg, out, mode, steps, **kw)
    if _finished(out, tc):
        print(f"{out}: already trained with this config; reusing it")
        return out
    # A model here from another config is a previous experiment's: this run replaces it.
    train(tc, resume=(out / "checkpoints").exists(), overwrite=True)
    return out


def _btx_steps(cfg: ExperimentConfig, n_tasks: int) -> tuple[int, int]:
    """(steps per branch, mix steps): the branches share ``btx_branch_share`` of the budget."""
    branch = max(1, round(cfg.btx_branch_share * cfg.steps / n_tasks))
    return branch, max(1, cfg.steps - branch * n_tasks)


def _btx(cfg: ExperimentConfig, out: Path, tasks: list[str], console: Any) -> Path:
    """Branch (dense, one per task) -> merge (task i's FFN = expert i, then seed experts up to the
    MoE's expert count) -> MiX (plain-routing MoE fine-tune on all tasks)."""
    import shutil

    from neko.model.btx import btx_merge
    from neko.train.export import SUMMARY_FILE
    from neko.train.modeling import base_model_dir

    branch_steps, mix_steps = _btx_steps(cfg, len(tasks))
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
            # Same MoE layers and expert count as the other MoE systems: they differ only in method.
            moe_layers=cfg.moe_layers,
            num_experts=max(cfg.num_experts, len(tasks)),
            seed_model=base_model_dir(cfg.base, cfg.seed, out / "seed"),
        )
    return _train(cfg, out / "mix", "moe", mix_steps, base=str(merged))


def _single(cfg: ExperimentConfig, out: Path, tasks: list[str], console: Any) -> dict[str, Path]:
    """One dense model per task on that task alone; together one system's budget."""
    steps = max(1, cfg.steps // len(tasks))
    dirs = {}
    for t in tasks:
        console.print(f"single-task: {t} ({steps} steps)")
        dirs[t] = _train(cfg, out / t, "dense", steps, tasks=[t])
    return dirs


def _summaries(run_dir: Path) -> list[dict[str, Any]]:
    """Every finished run under ``run_dir`` (a system's own, or BTX's branches and mix)."""
    import json

    from neko.train.export import SUMMARY_FILE

    files = (
        [run_dir / SUMMARY_FILE]
        if (run_dir / SUMMARY_FILE).is_file()
        else sorted(run_dir.rglob(SUMMARY_FILE))
    )
    return [json.loads(f.read_text(encoding="utf-8")) for f in files]


def _budget(cfg: ExperimentConfig, name: str, run_dir: Path, n_tasks: int) -> dict[str, Any]:
    """What the system trained, as its runs recorded it (a rerun reusing it still reports its cost)."""
    runs = _summaries(run_dir)
    rows = cfg.micro_batch_size
    if name == "btx":
        b, m = _btx_steps(cfg, n_tasks)
        steps = f"{n_tasks} x {b} + {m} = {n_tasks * b + m} x {rows}"
        trains = f"{n_tasks} dense branches ({b} steps each), then every MoE weight ({m} steps)"
    elif name == "single":
        s = max(1, cfg.steps // n_tasks)
        steps = f"{n_tasks} x {s} = {n_tasks * s} x {rows}"
        trains = f"{n_tasks} dense models, each on its own task"
    else:
        steps = f"{cfg.steps} x {rows}"
        trains = {
            "dense": "every weight",
            "lora": f"rank-{cfg.lora_r} adapters (attention, FFN, each expert) + routers; rest frozen",
            "moe": "every weight; plain routing (router from random init)",
            "moe_lb": "every weight; plain routing + balance loss",
            "neko": "every weight; task-guided routing",
            "neko_lb": "every weight; task-guided routing + balance loss",
        }[name]
    tokens = int(sum(r.get("tokens", 0) for r in runs))
    loop_s = sum(r.get("tokens", 0) / r["tokens_per_s"] for r in runs if r.get("tokens_per_s"))
    return {
        "steps": steps,
        "trains": trains,
        "tokens": tokens,
        "seconds": round(sum(float(r.get("elapsed_s", 0.0)) for r in runs), 1),
        "tokens_per_s": round(tokens / loop_s, 1) if loop_s else 0.0,
    }


def estimate_seconds(
    cfg: ExperimentConfig, n_seen: int, n_typo: int, n_zeroshot: int, n_tasks: int = 5
) -> float:
    """Wall-clock seconds of a CPU run of ``cfg`` from the measured speeds above (quiet 2-core CPU,
    SmolLM2 with its last 6 layers MoE; other shapes scale by tokens per step only)."""
    scale = cfg.micro_batch_size * cfg.max_seq_len / (4 * 384)
    train = 0.0
    decode_rows = 0
    for name in cfg.systems:
        per_step = CPU_SECONDS_PER_STEP.get(name.removesuffix("_lb"), CPU_SECONDS_PER_STEP["moe"])
        if name == "btx":
            b, m = _btx_steps(cfg, n_tasks)
            train += (n_tasks * b * CPU_SECONDS_PER_STEP["dense"] + m * CPU_SECONDS_PER_STEP["moe"]) * scale
        else:
            train += cfg.steps * per_step * scale
        decode_rows += n_seen if name == "single" else n_seen + 2 * n_typo + n_zeroshot
    if "neko" in cfg.systems:
        decode_rows += n_seen * len(cfg.inference_top_k)
    return train + decode_rows * CPU_SECONDS_PER_ROW + 60.0 * len(cfg.systems)  # + loading, saving


def run_experiment(cfg: ExperimentConfig, console: Any = None) -> dict[str, Any]:
    """Train every system at the same budget, score all on the same rows, report every table."""
    from rich.console import Console

    console = console or Console()
    t0 = time.time()
    out, data = Path(cfg.output_dir), Path(cfg.data_dir)
    for split in ("train", "dev", "test"):
        if not (data / f"{split}.jsonl").is_file():
            raise FileNotFoundError(
                f"{data / (split + '.jsonl')}: benchmark split missing; run `neko data build --out {data}`"
            )
    tasks = sorted({e.task for e in load_split(data / "train.jsonl") if e.task not in UNSEEN_TASKS})
    rows = subsample(load_split(data / "test.jsonl"), cfg.eval.rows_per_task, cfg.eval.seed)
    seen = [e for e in rows if e.task not in UNSEEN_TASKS]
    typo = [e for e in rows if e.task in UNSEEN_TASKS]
    zs_path = data / ZEROSHOT_FILE
    zeroshot = (
        subsample(load_split(zs_path), cfg.eval.rows_per_task, cfg.eval.seed)
        if cfg.zeroshot and zs_path.is_file()
        else []
    )
    dev = load_split(data / "dev.jsonl")
    labels = system_labels(cfg, len(tasks))
    console.rule("[bold]neko experiment")
    console.print(
        f"{len(cfg.systems)} systems x {cfg.steps} optimizer steps of {cfg.micro_batch_size} packed rows of "
        f"<= {cfg.max_seq_len} tokens; scored on {len(seen)} seen-task test rows, {len(typo)} typo rows "
        f"(0- and 5-shot) and {len(zeroshot)} zero-shot rows"
    )
    if cfg.precision == "fp32" and cfg.base == "smollm2" and cfg.moe_layers in (CPU_MOE_LAYERS, "24-29"):
        # the measured speeds are for this shape only (all-layer MoE trains 2.3x slower)
        est = estimate_seconds(cfg, len(seen), len(typo), len(zeroshot), len(tasks))
        console.print(f"estimated time on a quiet 2-core CPU: {est / 3600:.1f} h (bench/NOTES.md)")

    model_dirs: dict[str, Path] = {}
    single_dirs: dict[str, Path] = {}
    budgets: dict[str, dict[str, Any]] = {}
    for name in cfg.systems:
        console.rule(f"train {labels[name]}")
        if name == "btx":
            model_dirs[name] = _btx(cfg, out / "btx", tasks, console)
        elif name == "single":
            single_dirs = _single(cfg, out / "single", tasks, console)
        elif name.endswith("_lb"):
            model_dirs[name] = _train(
                cfg, out / name, name.removesuffix("_lb"), cfg.steps, aux_loss="standard"
            )
        else:
            model_dirs[name] = _train(cfg, out / name, name, cfg.steps)
        budgets[name] = _budget(cfg, name, out / name, len(tasks))

    outputs, typo_out, zs_out = _decode_all(
        cfg, out, model_dirs, single_dirs, seen, typo, zeroshot, dev, labels, console
    )
    summary = _score_and_report(
        cfg, out, seen, typo, zeroshot, outputs, typo_out, zs_out, labels, budgets, console
    )
    summary["elapsed_s"] = round(time.time() - t0, 1)
    from neko.io import atomic_write_json, atomic_write_text

    atomic_write_json(out / "experiment.json", summary)
    atomic_write_text(out / "results.md", f"{summary['title']}\n\n{experiment_markdown(summary)}")
    return summary


def _decode_all(
    cfg: ExperimentConfig,
    out: Path,
    model_dirs: dict[str, Path],
    single_dirs: dict[str, Path],
    seen: list[Any],
    typo: list[Any],
    zeroshot: list[Any],
    dev: list[Any],
    labels: dict[str, str],
    console: Any,
) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, list[str]]]:
    """Every system's outputs: seen rows, typo 0/5-shot, zero-shot rows (cached per model and rows)."""
    outputs: dict[str, list[str]] = {}
    typo_out: dict[str, list[str]] = {}
    zs_out: dict[str, list[str]] = {}
    for name, mdir in model_dirs.items():
        console.rule(f"correct with {labels[name]}")
        outputs[name] = _predict_cached(out, name, mdir, seen, cfg.eval)
        if typo:
            typo_out[f"{name}@0shot"] = _predict_cached(out, f"{name}@typo-0shot", mdir, typo, cfg.eval)
            typo_out[f"{name}@5shot"] = _predict_cached(
                out, f"{name}@typo-5shot", mdir, typo, cfg.eval, fewshot=(dev, cfg.eval.fewshot_k)
            )
        if zeroshot:
            zs_out[name] = _predict_cached(out, f"{name}@zeroshot", mdir, zeroshot, cfg.eval)
        if name == "neko":
            for k in cfg.inference_top_k:
                outputs[f"neko_top{k}"] = _predict_cached(out, f"neko_top{k}", mdir, seen, cfg.eval, top_k=k)
    if single_dirs:
        console.rule(f"correct with {labels['single']}")
        by_task: dict[str, list[str]] = {}
        for t, mdir in single_dirs.items():
            mine = [e for e in seen if e.task == t]
            by_task[t] = _predict_cached(out, f"single-{t}", mdir, mine, cfg.eval) if mine else []
        cursor = {t: iter(v) for t, v in by_task.items()}
        # Each row by its own task's model (a task without one keeps its 1-best).
        outputs["single"] = [next(cursor[e.task]) if e.task in cursor else e.one_best for e in seen]
    return outputs, typo_out, zs_out


def _score_and_report(
    cfg: ExperimentConfig,
    out: Path,
    seen: list[Any],
    typo: list[Any],
    zeroshot: list[Any],
    outputs: dict[str, list[str]],
    typo_out: dict[str, list[str]],
    zs_out: dict[str, list[str]],
    labels: dict[str, str],
    budgets: dict[str, dict[str, Any]],
    console: Any,
) -> dict[str, Any]:
    from neko.experiment import tables as T
    from neko.experiment.report import average_summary, averages_table, pairs_table, print_table, results_rows

    trained = [n for n in outputs if not n.startswith("neko_top")]
    pairs = [("neko", n) for n in trained if n != "neko"] if "neko" in outputs else []
    report = score_system_outputs(seen, outputs, seed=cfg.seed, pairs=pairs)
    typo_report = score_system_outputs(typo, typo_out, seed=cfg.seed) if typo_out else None
    zs_report: dict[str, Any] = {"tasks": {}}
    for task, group in (("asr", "voice"), ("mt", None)):
        idx = [i for i, e in enumerate(zeroshot) if e.task == task]
        if idx and zs_out:
            part = score_system_outputs(
                [zeroshot[i] for i in idx],
                {n: [o[i] for i in idx] for n, o in zs_out.items()},
                seed=cfg.seed,
                group_by=group,
            )
            zs_report["tasks"].update(part["tasks"])
    # trained systems in the configured order, then the single-task models, then NeKo's top-K variants
    systems = trained + [n for n in outputs if n.startswith("neko_top")]
    zs_systems = list(zs_out)
    typo_systems = [n for n in trained if f"{n}@0shot" in typo_out]
    table5 = [n for n in ("single", "dense", "moe", "neko") if n in outputs]
    tables = {
        "budget": T.markdown(T.budget_table(budgets, labels)),
        "seen": T.markdown(results_rows(report, systems, labels)),
        "averages": T.markdown(averages_table(average_summary(report, systems), labels)),
        "pairs": T.markdown(pairs_table(report, labels)),
        "zeroshot_asr": T.markdown(T.zeroshot_asr_table(zs_report, zs_systems, labels)),
        "zeroshot_mt": T.markdown(T.zeroshot_mt_table(zs_report, zs_systems, labels)),
        "single_task": T.markdown(T.single_task_table(report, table5, labels)) if "single" in outputs else "",
        "typo": T.markdown(T.typo_table(typo_report, typo_systems, labels)),
    }
    machine = "GPU" if cfg.precision != "fp32" else "CPU"
    title = (
        f"neko experiment on {machine}: {cfg.steps} optimizer steps x {cfg.micro_batch_size} packed rows per "
        f"system, {len(seen)} seen-task test rows ({cfg.eval.rows_per_task or 'all'} per task), "
        f"{len(typo)} typo rows, {len(zeroshot)} zero-shot rows, precision {cfg.precision}"
    )
    header, rows = results_rows(report, systems, labels)
    print_table(header, rows, title, console)
    print_table(*averages_table(average_summary(report, systems), labels), "averages over tasks", console)
    if pairs:
        print_table(*pairs_table(report, labels), "head to head (paired bootstrap, 95% CI)", console)
    _write_predictions(out / "predictions.jsonl", seen, outputs)
    return {
        "config": asdict(cfg),
        "machine": machine,
        "title": title,
        "labels": labels,
        "budgets": budgets,
        "decoding": DECODING,
        "report": report,
        "typo_report": typo_report,
        "zeroshot_report": zs_report,
        "averages": average_summary(report, systems),
        "train_seconds": {n: b["seconds"] for n, b in budgets.items()},
        "decode_seconds": _decode_seconds(out),
        "table_markdown": tables["seen"],
        "tables": tables,
    }


DECODING = (
    "greedy, plain generation (no correction policy, no guard), each row's token limit from its input "
    "(1.5 x the longest hypothesis + 16 tokens), top-K routing = each model's own"
)
# (title, table key): the order and the paper table each table mirrors.
SECTIONS = (
    ("Training budget (equal for every system; tokens = real answer+prompt tokens trained on)", "budget"),
    ("Seen tasks, in-domain test rows (analog of the paper's Tables 2 and 3)", "seen"),
    ("Averages over tasks (WER tasks unweighted; MT separately)", "averages"),
    (
        "Head to head on the same rows (paired bootstrap, 95% CI; WER in points, negative = fewer errors; "
        "BLEU in points, positive = better)",
        "pairs",
    ),
    (
        "Zero-shot ASR, flite voices no training row has (analog of Table 1), WER % (relative change)",
        "zeroshot_asr",
    ),
    ("Zero-shot MT, pivot languages no training row used (analog of Table 4), BLEU", "zeroshot_mt"),
    ("Single-task fine-tuning vs multi-task (analog of Table 5)", "single_task"),
    ("Unseen typo task, 0-shot and 5-shot (analog of Table 6), WER %", "typo"),
)


def experiment_markdown(summary: dict[str, Any]) -> str:
    """Every table of a run, each under the paper table it mirrors."""
    tables = summary.get("tables")
    if tables is None:  # a summary from before the tables were split by paper table
        from neko.experiment.report import average_summary, averages_table, pairs_table, to_markdown

        labels = summary.get("labels") or system_labels(ExperimentConfig())
        report = summary["report"]
        tables = {
            "seen": summary["table_markdown"],
            "averages": to_markdown(
                *averages_table(summary.get("averages") or average_summary(report, []), labels)
            ),
            "pairs": to_markdown(*pairs_table(report, labels)),
        }
    parts = [f"Decoding: {summary['decoding']}." if summary.get("decoding") else ""]
    for title, key in SECTIONS:
        text = tables.get(key) or ""
        if text.strip() and "|" in text.split("\n", 2)[-1]:
            parts.append(f"{title}:\n\n{text}")
    return "\n\n".join(p for p in parts if p)


def command_line(config: dict[str, Any]) -> str:
    """The ``neko experiment`` call that reproduces a run (from its saved config)."""
    profile = "full" if config.get("precision", "fp32") != "fp32" else "reduced"
    default = {**asdict(ExperimentConfig()), **PROFILES[profile]}
    parts = ["neko experiment"]
    if profile == "full":
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
    if list(config.get("systems", default["systems"])) != list(default["systems"]):
        parts.append(f"--systems {','.join(config['systems'])}")
    if list(config.get("inference_top_k", default["inference_top_k"])) != list(default["inference_top_k"]):
        parts.append(f"--inference-top-k {','.join(map(str, config['inference_top_k'])) or 'none'}")
    if config.get("aux_loss", "off") != "off":
        parts.append(f"--aux-loss {config['aux_loss']}")
    if config.get("data_dir", default["data_dir"]) != default["data_dir"]:
        parts.append(f"--data-dir {config['data_dir']}")
    if config.get("base", default["base"]) != default["base"]:
        parts.append(f"--base {config['base']}")
    return " ".join(parts)


def _decode_seconds(out: Path) -> float:
    """Decoding time of every output as recorded when it was decoded (cached ones included)."""
    import json

    total = 0.0
    for f in sorted((out / "outputs").glob("*.json")):
        try:
            total += float(json.loads(f.read_text(encoding="utf-8")).get("seconds", 0.0))
        except (ValueError, UnicodeDecodeError):
            continue
    return round(total, 3)


def _model_stamp(model_dir: Path) -> str:
    import hashlib

    from neko.train.export import SUMMARY_FILE

    f = Path(model_dir) / SUMMARY_FILE
    return hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else ""


def _predict_cached(
    out: Path,
    key: str,
    model_dir: Path,
    rows: list[Any],
    plan: EvalPlan,
    *,
    top_k: int | None = None,
    fewshot: tuple[list[Any], int] | None = None,
) -> list[str]:
    """Decode once per (model, rows, plan, top-K, shots): a rerun (e.g. after adding a system)
    re-scores without re-decoding, which is most of a CPU run's evaluation time."""
    import json

    from neko.io import atomic_write_json

    want = {
        "model": _model_stamp(model_dir),
        "ids": [e.id for e in rows],
        "plan": asdict(plan),
        "top_k": top_k,
        "shots": fewshot[1] if fewshot else 0,
    }
    path = out / "outputs" / f"{key}.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            saved = {}
        if {k: saved.get(k) for k in want} == want and len(saved.get("outputs", [])) == len(rows):
            return saved["outputs"]
    t0 = time.time()
    pool, k = fewshot if fewshot else ((), 0)
    # Plain generation on every row: the comparison scores training methods, not the product's policy.
    texts = predict(
        model_dir, rows, plan, top_k_experts=top_k, fewshot_pool=pool, fewshot_k=k, keep_if_agree=False
    ).final
    atomic_write_json(path, {**want, "seconds": round(time.time() - t0, 3), "outputs": texts}, indent=None)
    return texts


def _write_predictions(path: Path, test: list[Any], outputs: dict[str, list[str]]) -> None:
    """One JSONL row per seen-task test row, each system's output in a field of its name (re-score
    with ``neko eval --pred predictions.jsonl --systems neko,moe,...``)."""
    import json

    from neko.io import atomic_write_text

    lines = []
    for i, e in enumerate(test):
        row = e.to_dict()
        row.update({name: texts[i] for name, texts in outputs.items()})
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + "\n")
