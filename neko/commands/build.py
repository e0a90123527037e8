"""`neko data build`: generate the embedded correction benchmark with real recognizers."""

from __future__ import annotations

from pathlib import Path

import typer

from neko.commands import fail


def build_command(
    out: Path = typer.Option(
        None,
        "--out",
        help="Output folder (default: the shipped data/benchmark of a source checkout; ./data/benchmark "
        "for an installed neko).",
    ),
    size: str = typer.Option("small", "--size", help="small (shipped) or full."),
    tasks: list[str] = typer.Option(
        None, "--tasks", help="Tasks to build (repeat or comma-separate); default: all."
    ),
    workers: int = typer.Option(0, "--workers", help="Worker processes (0 = all cores)."),
    seed: int = typer.Option(0, "--seed", help="Seed for every random choice of the build."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Re-run rows recorded as failed."),
    keep_work: bool = typer.Option(False, "--keep-work", help="Keep the resumable shards after finishing."),
    finalize_partial: bool = typer.Option(
        False,
        "--finalize-partial",
        help="Write the output from the rows done so far, without running more (stays resumable).",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    zeroshot_only: bool = typer.Option(
        False,
        "--zeroshot-only",
        help="Only (re)build test_zeroshot.jsonl (held-out ASR voices and MT pivots) beside an existing "
        "build of the same --seed/--size; its other files stay as they are.",
    ),
) -> None:
    """Build train/dev/test JSONL, the zero-shot test file (held-out conditions) and manifest.json from
    flite/PocketSphinx, Tesseract, Apertium and rule-based corruptions. Resumable: rerun the same
    command after an interruption."""
    from rich.console import Console

    from neko.benchmark.plan import TASKS, BuildConfig
    from neko.benchmark.recognizers.base import MissingToolError
    from neko.benchmark.runner import build_benchmark
    from neko.paths import BENCHMARK_DIR, PACKAGED_DATA_DIR

    console = Console(stderr=True)
    names = [t.strip() for item in (tasks or []) for t in item.split(",") if t.strip()] or list(TASKS)
    if out is None:
        # never write into an installed package: its copy is read-only data, not a build folder
        packaged = BENCHMARK_DIR.is_relative_to(PACKAGED_DATA_DIR)
        out = Path("data/benchmark") if packaged else BENCHMARK_DIR
    try:
        cfg = BuildConfig(
            out=str(out),
            size=size,
            tasks=tuple(names),
            workers=workers,
            seed=seed,
            keep_work=keep_work,
        )
        res = build_benchmark(
            cfg,
            quiet=quiet,
            retry_failed=retry_failed,
            finalize_partial=finalize_partial,
            log=console.print,
            only_zeroshot=zeroshot_only,
        )
    except (ValueError, MissingToolError) as e:
        fail(e)
    total = sum(sum(v.values()) for v in res.rows.values()) + sum(res.zeroshot_rows.values())
    fails = sum(res.failures.values()) + res.zeroshot_failures
    console.print(
        f"wrote {total} rows to {res.out} in {res.seconds:.0f} s; {fails} failed (see failures.jsonl "
        "and the manifest's zeroshot section)"
    )
    for task, per in res.rows.items():
        console.print(
            f"  {task:14s} "
            + "  ".join(f"{s}={n}" for s, n in per.items())
            + f"  failed={res.failures[task]}"
        )
    if res.zeroshot_rows:
        console.print("  test_zeroshot  " + "  ".join(f"{t}={n}" for t, n in res.zeroshot_rows.items()))


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Attach this area's subcommands to the main app (and to `neko data`)."""
    data_app.command("build")(build_command)
