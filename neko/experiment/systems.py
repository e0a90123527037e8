"""Training every system of the comparison at the same budget (see :mod:`neko.experiment.compare`).

Each system is one ``neko train`` run of the shared recipe (:mod:`neko.experiment.recipe`) that
differs only in mode; BTX is branches -> merge -> MiX, the single-task baseline one dense model per
task. A system already trained to the end with exactly its config is reused, so a rerun after an
interruption (or with a system added) trains only what is missing.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from neko.experiment.budget import btx_steps, recorded_budget, single_steps
from neko.experiment.config import ExperimentConfig
from neko.experiment.recipe import train_config
from neko.model.btx import btx_merge
from neko.train.config import LoraConfig, RoutingConfig, TrainConfig, config_to_dict
from neko.train.export import SUMMARY_FILE
from neko.train.loop import train
from neko.train.modeling import base_model_dir

__all__ = ["TrainedSystems", "train_systems", "system_train_config"]

# The LoRA baseline's adapters: attention and FFN projections (nn.Linear), and the experts' 3-D tensors.
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_PARAMETERS = ("experts.gate_up_proj", "experts.down_proj")


@dataclass
class TrainedSystems:
    """model_dirs: system -> its model (BTX: the MiX model). single_dirs: task -> its single-task
    model. budgets: system -> what it trained (:func:`neko.experiment.budget.recorded_budget`)."""

    model_dirs: dict[str, Path] = field(default_factory=dict)
    single_dirs: dict[str, Path] = field(default_factory=dict)
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)


def system_train_config(
    cfg: ExperimentConfig,
    out: Path,
    mode: str,
    steps: int,
    *,
    tasks: list[str] | None = None,
    aux_loss: str | None = None,
    base: str | None = None,
) -> TrainConfig:
    """The recipe every system shares; only the mode (and BTX's / single's data) differ."""
    lora = None
    if mode == "lora":
        lora = LoraConfig(
            r=cfg.lora_r,
            alpha=2 * cfg.lora_r,
            dropout=0.0,  # PEFT's parameter (expert) adapters take no dropout; none anywhere, alike
            target_modules=list(LORA_MODULES),
            target_parameters=list(LORA_PARAMETERS),
            modules_to_save=["mlp.gate"],
            base_mode="moe",
        )
    tc = train_config(
        cfg,
        out,
        mode,
        steps=steps,
        epochs=1,
        precision=cfg.precision,
        base=base,
        tasks=tasks or [],
        routing=RoutingConfig(aux_loss=aux_loss or cfg.aux_loss, aux_coef=cfg.aux_coef),
        lora=lora,
    )
    # A system takes 20-40 CPU minutes: a checkpoint every sixth of the way means a killed run
    # (a closed laptop, an ended session) loses minutes, not the system; one kept, as disk is finite.
    tc.save_every = max(1, steps // 6)
    tc.keep_checkpoints = 1
    return tc


def train_systems(
    cfg: ExperimentConfig, out: Path, tasks: list[str], labels: dict[str, str], console: Console
) -> TrainedSystems:
    """Train ``cfg.systems`` in order, each under ``out / name``."""
    done = TrainedSystems()
    for name in cfg.systems:
        console.rule(f"train {labels[name]}")
        if name == "btx":
            done.model_dirs[name] = _btx(cfg, out / "btx", tasks, console)
        elif name == "single":
            done.single_dirs = _single(cfg, out / "single", tasks, console)
        elif name.endswith("_lb"):
            done.model_dirs[name] = _train(
                cfg, out / name, name.removesuffix("_lb"), cfg.steps, aux_loss="standard"
            )
        else:
            done.model_dirs[name] = _train(cfg, out / name, name, cfg.steps)
        done.budgets[name] = recorded_budget(cfg, name, out / name, len(tasks))
    return done


def _finished(out: Path, tc: TrainConfig) -> bool:
    """True when ``out`` already holds a model trained to the end with exactly this config.

    A rerun after an interruption then skips the systems that were done (each takes many minutes on
    CPU) instead of training them again or failing on a non-empty directory."""
    summary, saved = out / SUMMARY_FILE, out / "train_config.yaml"
    if not (summary.is_file() and saved.is_file()):
        return False
    base_cfg = Path(tc.model.base) / "config.json"
    if base_cfg.is_file() and base_cfg.stat().st_mtime_ns > summary.stat().st_mtime_ns:
        return False  # trained from a local base (BTX's merge) that has been rebuilt since
    done = json.loads(summary.read_text(encoding="utf-8")).get("stop_reason") in ("completed", "max_steps")
    return done and _same_config(out, tc)


def _same_config(out: Path, tc: TrainConfig) -> bool:
    saved = out / "train_config.yaml"
    want = yaml.safe_load(yaml.safe_dump(config_to_dict(tc), sort_keys=False))
    return saved.is_file() and yaml.safe_load(saved.read_text(encoding="utf-8")) == want


def _train(cfg: ExperimentConfig, out: Path, mode: str, steps: int, **kw: Any) -> Path:
    tc = system_train_config(cfg, out, mode, steps, **kw)
    if _finished(out, tc):
        print(f"{out}: already trained with this config; reusing it")
        return out
    # A model or half-run here from another config is a previous experiment's: this run replaces
    # it; a half-run of this very config (a killed run) continues from its last checkpoint.
    checkpoints = out / "checkpoints"
    if checkpoints.exists() and not _same_config(out, tc):
        shutil.rmtree(checkpoints)
    train(tc, resume=checkpoints.exists(), overwrite=True)
    return out


def _btx(cfg: ExperimentConfig, out: Path, tasks: list[str], console: Console) -> Path:
    """Branch (dense, one per task) -> merge (task i's FFN = expert i, then seed experts up to the
    MoE's expert count) -> MiX (plain-routing MoE fine-tune on all tasks)."""
    branch_steps, mix_steps = btx_steps(cfg, len(tasks))
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


def _single(cfg: ExperimentConfig, out: Path, tasks: list[str], console: Console) -> dict[str, Path]:
    """One dense model per task on that task alone; together one system's budget."""
    steps = single_steps(cfg, len(tasks))
    dirs = {}
    for t in tasks:
        console.print(f"single-task: {t} ({steps} steps)")
        dirs[t] = _train(cfg, out / t, "dense", steps, tasks=[t])
    return dirs
