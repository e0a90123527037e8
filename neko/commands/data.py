"""`neko data convert` and `neko data formats`: thin wrappers over :mod:`neko.data.formats`."""

from __future__ import annotations

from pathlib import Path

import typer

from neko.commands import fail


def convert(
    src: Path = typer.Argument(..., help="Input file in any supported format (see `neko data formats`)."),
    dst: Path = typer.Argument(..., help="Output neko JSONL file (written atomically)."),
    format: str | None = typer.Option(None, "--format", "-f", help="Input format; detected when omitted."),
    task: str | None = typer.Option(None, "--task", "-t", help="Force this task on every row."),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="Skip bad rows (counted by reason) instead of stopping at the first."
    ),
    truncate_chars: int | None = typer.Option(
        None,
        "--truncate-chars",
        min=1,
        help="Cut single-text inputs and references to N characters (the paper's OCR protocol: 1000).",
    ),
    dedup: bool = typer.Option(False, "--dedup", help="Drop repeated hypotheses (first occurrence kept)."),
    top_n: int | None = typer.Option(
        None,
        "--top-n",
        min=1,
        help="Keep the first N hypotheses of each N-best list (after --dedup), e.g. 5 of HypR's 50.",
    ),
    tasks_config: Path | None = typer.Option(
        None, "--tasks-config", help="YAML/JSON file of user-defined tasks to accept besides the built-ins."
    ),
) -> None:
    """Convert a data file to neko JSONL and print rows per task and skipped rows per reason."""
    from neko.data.formats import FormatError, convert_file
    from neko.schema import SchemaError
    from neko.tasks import load_task_config

    try:
        registry = load_task_config(tasks_config) if tasks_config is not None else None
        report = convert_file(
            src,
            dst,
            format=format,
            task=task,
            skip_invalid=skip_invalid,
            registry=registry,
            truncate_chars=truncate_chars,
            dedup=dedup,
            top_n=top_n,
        )
    except (SchemaError, FormatError, FileNotFoundError, ValueError) as e:
        hint = "hint: fix the row, or pass --skip-invalid to skip bad rows and count them"
        # exit 2 like every other command on bad input (it was 1, issue 23.9)
        fail(f"{e}\n{hint}" if isinstance(e, SchemaError) and e.line is not None and not skip_invalid else e)
    typer.echo(f"wrote {report.rows} rows to {dst} (format: {report.format})")
    for name, n in sorted(report.tasks.items()):
        typer.echo(f"  {name}: {n}")
    if report.skipped:
        typer.echo(f"skipped {report.skipped} invalid rows:")
        for kind, n in report.reasons.most_common():
            first = next((e for e in report.errors if e.kind == kind), None)
            typer.echo(f"  {kind}: {n}" + (f"  (first: {first})" if first is not None else ""))
    if report.rows == 0:
        typer.echo("warning: no rows converted", err=True)


def formats() -> None:
    """List the supported input formats."""
    from neko.data.formats import describe_formats

    for name, description in describe_formats():
        typer.echo(f"{name:18s} {description}")


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Attach this area's subcommands to the main app (and to `neko data`)."""
    data_app.command("convert")(convert)
    data_app.command("formats")(formats)
