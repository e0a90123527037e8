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
    whisper_only: bool = typer.Option(
        False,
        "--whisper-only",
        help="Only (re)build the Whisper ASR rows (asr-whisper-*) beside an existing build of the same "
        "--seed/--size and merge them into its files; every other row stays as it is.",
    ),
    whisper_rows: str | None = typer.Option(
        None,
        "--whisper-rows",
        help="Whisper ASR rows per split as train,dev,test,zeroshot (e.g. 2000,200,300,300; 0,0,0,0 for "
        "none). Default: the --size's.",
    ),
) -> None:
    """Build train/dev/test JSONL, the zero-shot test file (held-out conditions) and manifest.json from
    flite/PocketSphinx, Whisper tiny.en (CTranslate2) on flite/espeak-ng speech through noise, reverb
    and telephone channels, Tesseract, Apertium and rule-based corruptions. Resumable: rerun the same
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
        whisper = None
        if whisper_rows is not None:
            parts = [p.strip() for p in whisper_rows.split(",")]
            if len(parts) != 4 or not all(p.isdigit() for p in parts):
                raise ValueError(
                    f"--whisper-rows {whisper_rows!r}: give four counts, train,dev,test,zeroshot"
                )
            whisper = dict(zip(("train", "dev", "test", "test_zeroshot"), map(int, parts), strict=True))
        cfg = BuildConfig(
            out=str(out),
            size=size,
            tasks=tuple(names),
            workers=workers,
            seed=seed,
            keep_work=keep_work,
            whisper=whisper,
        )
        res = build_benchmark(
            cfg,
            quiet=quiet,
            retry_failed=retry_failed,
            finalize_partial=finalize_partial,
            log=console.print,
            only_zeroshot=zeroshot_only,
            only_whisper=whisper_only,
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
    data_app.command("add-nbest")(add_nbest_command)


def add_nbest_command(
    src: Path = typer.Argument(
        ..., help="A released N-best file (HyPoradise JSON, or any format `neko data convert` reads)."
    ),
    name: str = typer.Option(
        ..., "--name", help="Short name of the set; row ids become asr-NAME-<split>-<n>."
    ),
    recognizer: str = typer.Option(
        ..., "--recognizer", help="Which recognizer made the N-best lists (stored in meta)."
    ),
    licence: str = typer.Option(..., "--licence", help="The set's licence, recorded in the manifest."),
    out: Path = typer.Option(Path("data/benchmark"), "--out", help="The benchmark build to add the rows to."),
    dev: int = typer.Option(200, "--dev", help="Rows carved out as dev (policy tuning)."),
    test: int = typer.Option(200, "--test", help="Rows carved out as test (scored, never trained on)."),
    seed: int = typer.Option(0, "--seed"),
    format: str | None = typer.Option(None, "--format", help="Input format (default: detected)."),
) -> None:
    """Add a released set of real N-best lists (e.g. HyPoradise ATIS, Whisper-Large) to a benchmark
    build as ASR rows, with dev and test carved out by reference; other rows stay as they are."""
    from neko.benchmark.released import add_released_nbest

    if not src.is_file():
        fail(f"{src}: file not found")
    try:
        made = add_released_nbest(
            src,
            out,
            name=name,
            recognizer=recognizer,
            licence=licence,
            n_dev=dev,
            n_test=test,
            seed=seed,
            format=format,
        )
    except ValueError as e:
        fail(e)
    typer.echo(
        f"added {sum(made.values())} rows of {name} to {out}: "
        + ", ".join(f"{s}={n}" for s, n in made.items())
    )
