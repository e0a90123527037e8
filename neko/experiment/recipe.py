"""The training recipe the quick start and every system of the comparison share: one TrainConfig.

Both runs train on the benchmark's train split with the same model shape, optimizer and batch
settings from their own config; only what differs is passed in (the mode, the budget, BTX's and the
single-task models' data, the comparison's routing loss and LoRA adapters).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from neko.experiment.config import ExperimentConfig, QuickstartConfig
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

__all__ = ["train_config"]


def train_config(
    run: QuickstartConfig | ExperimentConfig,
    out: Path,
    mode: str,
    *,
    steps: int,
    epochs: int,
    precision: str,
    base: str | None = None,
    train_layers: str | None = None,
    time_budget_s: float = 0.0,
    tasks: Sequence[str] = (),
    task_weights: Mapping[str, float] | None = None,
    use_chat_template: bool = True,
    routing: RoutingConfig | None = None,
    lora: LoraConfig | None = None,
) -> TrainConfig:
    """``run``'s model shape, data and optimizer as a TrainConfig writing to ``out``; ``base``
    replaces ``run.base`` (BTX's merged model), ``tasks`` keeps only those tasks' rows."""
    tc = TrainConfig(
        mode=mode,
        model=ModelConfig(base=base or run.base, train_layers=train_layers),
        upcycle=UpcycleConfig(num_experts=run.num_experts, top_k=run.top_k, moe_layers=run.moe_layers),
        data=DataConfig(
            train=[DataSource(path=str(Path(run.data_dir) / "train.jsonl"))],
            max_seq_len=run.max_seq_len,
            tasks=list(tasks),
            task_weights=dict(task_weights or {}),
            use_chat_template=use_chat_template,
        ),
        optim=OptimConfig(lr=run.lr, epochs=epochs),
        routing=routing or RoutingConfig(),
        lora=lora or LoraConfig(),
        max_steps=steps,
        time_budget_s=time_budget_s,
        seed=run.seed,
        output_dir=str(out),
        precision=precision,
    )
    tc.batch.micro_batch_size = run.micro_batch_size
    return tc
