"""`neko train` (thin wrapper over ``neko.train.loop.train``)."""

from __future__ import annotations

import os

import typer

from neko.commands import fail


def train_cmd(
    config: str = typer.Argument(None, help="Training YAML (see configs/train/). Omit to use --set only."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Override a field: --set optim.lr=3e-4 --set data.tasks=\\[asr,mt] (repeatable).",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Train afresh into an output directory that holds a finished model."
    ),
    output_dir: str = typer.Option(None, "--output-dir", "-o", help="Output directory (= model directory)."),
    mode: str = typer.Option(None, "--mode", help="neko | moe | dense | lora (overrides the config)."),
    tasks: str = typer.Option(
        None, "--tasks", help="Comma-separated tasks to keep (BTX: one dense model per task)."
    ),
    skip_invalid: bool = typer.Option(
        None, "--skip-invalid/--no-skip-invalid", help="Skip and count invalid data rows."
    ),
    precision: str = typer.Option(
        None,
        "--precision",
        help="auto (bf16 where the GPU/CPU has native bf16, else fp32) | fp32 | bf16 | fp16 [default: the "
        "config's, auto].",
    ),
) -> None:
    """Fine-tune a model on a mixture of correction tasks (task-guided MoE, MoE, dense or LoRA).

    Multi-GPU / multi-node: `accelerate launch --config_file configs/accelerate/ddp.yaml -m neko train ...`
    (see docs/training.md).
    """
    from neko.train.config import ConfigError, load_config

    overrides = list(set_)
    if tasks:
        overrides.append(f"data.tasks=[{tasks}]")
    if skip_invalid is not None:
        overrides.append(f"data.skip_invalid={str(skip_invalid).lower()}")
    if precision is not None:
        overrides.append(f"precision={precision}")
    try:
        cfg = load_config(config, overrides, mode=mode, output_dir=output_dir)
    except (ConfigError, FileNotFoundError) as e:
        fail(e)

    from neko.train.loop import TrainingDiverged, train

    try:
        result = train(cfg, resume=resume, overwrite=overwrite)
    except TrainingDiverged as e:
        fail(e, 3)
    except (ValueError, FileNotFoundError, KeyError) as e:
        fail(e)
    if int(os.environ.get("RANK", "0")) != 0:  # one line per run, not per process
        return
    typer.echo(
        f"{result.stop_reason}: {result.steps}/{result.total_steps} steps, "
        f"loss {result.final_loss if result.final_loss is None else round(result.final_loss, 4)}; "
        f"model in {result.model_dir}"
    )


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Attach this area's subcommands to the main app (and to `neko data`)."""
    app.command("train")(train_cmd)
