"""`neko eval` and `neko data stats`: thin wrappers over neko.eval.score and neko.eval.stats.

Defaults come from ``ScoreConfig`` / the metrics modules, so the CLI and the API cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

import typer

from neko.commands import fail


def _console():
    """Rich console; wide when piped or captured, so tables are not cut to 80 columns in logs."""
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def _registry(tasks_config: Path | None):
    if tasks_config is None:
        return None
    from neko.tasks import load_task_config

    return load_task_config(tasks_config)


def eval_cmd(
    pred: list[str] = typer.Option(
        ...,
        "--pred",
        help="Prediction rows (JSONL, neko row + 'prediction'). Repeat to compare systems; NAME=PATH names one.",
    ),
    ref: Path = typer.Option(
        None,
        "--ref",
        help="References by id, if P has none: any supported format (neko JSONL, a released HyPoradise "
        "file ...), read as `neko correct` reads its input.",
    ),
    normalizer: str = typer.Option(
        None,
        "--normalizer",
        help="whisper | basic | none (default: whisper; none under --scoring hyporadise).",
    ),
    scoring: str = typer.Option(
        None,
        "--scoring",
        help="corpus (default: corpus WER after the normalizer) | hyporadise (the HyPoradise papers' WER: "
        "text as written, per-utterance WER averaged); named in every report.",
    ),
    json_out: Path = typer.Option(None, "--json", help="Also write the full report here (JSON)."),
    systems: str = typer.Option(
        None,
        "--systems",
        help="Prediction fields to score, comma-separated (e.g. prediction,prediction_unguarded) "
        "(default: prediction); the names 1best/rover here add those baselines.",
    ),
    baselines: str = typer.Option(
        None,
        "--baselines",
        help="Baselines, comma-separated: 1best,rover or none (default: both); 1best is always in.",
    ),
    bleu_tokenize: str = typer.Option(None, "--bleu-tokenize", help="sacrebleu tokenizer (default: 13a)."),
    n_boot: int = typer.Option(
        None, "--n-boot", min=0, help="Bootstrap resamples; 0 = no CIs (default: 1000)."
    ),
    seed: int = typer.Option(None, "--seed", help="Bootstrap seed (default: 0)."),
    no_oracles: bool = typer.Option(False, "--no-oracles", help="Skip the N-best and compositional oracles."),
    by: str = typer.Option(
        None,
        "--by",
        help="Also score each task per value of this meta key (e.g. voice; recognizer,condition for several).",
    ),
    per_utterance: bool = typer.Option(
        False, "--per-utterance", help="Put per-utterance scores (with row ids) in the --json report."
    ),
    tasks_config: Path = typer.Option(
        None, "--tasks-config", help="User tasks (YAML/JSON) for their metrics."
    ),
) -> None:
    """Score predictions per task (WER/CER or BLEU) next to 1-best, ROVER and oracles, with bootstrap CIs."""
    import dataclasses

    from neko.eval.predictions import load_predictions, parse_system_arg
    from neko.eval.score import ScoreConfig, print_report, score_rows, write_report
    from neko.io import check_not_input
    from neko.schema import SchemaError

    try:
        from neko.eval.baselines import BASELINES

        overrides = {
            "normalizer": normalizer,
            "scoring": scoring,
            "bleu_tokenize": bleu_tokenize,
            "n_boot": n_boot,
            "seed": seed,
        }
        fields = ["prediction"]
        extra: list[str] = []
        if systems is not None:
            names = [s.strip() for s in systems.split(",") if s.strip()]
            fields = [n for n in names if n not in BASELINES]
            extra = [n for n in names if n in BASELINES]
        if baselines is not None:
            overrides["baselines"] = tuple(
                b.strip() for b in baselines.split(",") if b.strip() not in ("", "none")
            )
        if extra:
            overrides["baselines"] = tuple(dict.fromkeys([*overrides.get("baselines", ()), *extra]))
        if no_oracles:
            overrides["oracles"] = False
        if per_utterance:
            overrides["per_utterance"] = True
        if by:
            overrides["group_by"] = ",".join(k.strip().removeprefix("meta.") for k in by.split(","))
        cfg = dataclasses.replace(ScoreConfig(), **{k: v for k, v in overrides.items() if v is not None})
        files = [parse_system_arg(p) for p in pred]
        if json_out is not None:
            check_not_input(json_out, *(path for _, path in files), ref, tasks_config)
        registry = _registry(tasks_config)
        rows = load_predictions(files, ref=ref, fields=fields, registry=registry)
        report = score_rows(rows, cfg, registry=registry)
    except (ValueError, KeyError, FileNotFoundError, SchemaError) as e:
        fail(e)
    print_report(report, _console())
    if json_out is not None:
        write_report(report, json_out)
        typer.echo(f"wrote {json_out}")


def stats_cmd(
    file: Path = typer.Argument(..., help="Data file in any supported format (see `neko data formats`)."),
    json_out: Path = typer.Option(None, "--json", help="Also write the stats here (JSON)."),
    normalizer: str = typer.Option(
        None,
        "--normalizer",
        help="whisper | basic | none (default: whisper; none under --scoring hyporadise).",
    ),
    scoring: str = typer.Option(
        None, "--scoring", help="corpus (default) | hyporadise: which WER is the 1-best/oracle headline."
    ),
    bleu_tokenize: str = typer.Option(None, "--bleu-tokenize", help="sacrebleu tokenizer (default: 13a)."),
    format: str = typer.Option(None, "--format", "-f", help="Input format; detected when omitted."),
    task: str = typer.Option(None, "--task", "-t", help="Force this task on every row."),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="Skip bad rows (and say how many) instead of failing."
    ),
    top_n: int = typer.Option(
        None, "--top-n", min=1, help="Keep the first N hypotheses of each N-best list (e.g. 5 of HypR's 50)."
    ),
    tasks_config: Path = typer.Option(
        None, "--tasks-config", help="User tasks (YAML/JSON) for their metrics."
    ),
) -> None:
    """Rows per task, N-best sizes, 1-best WER/BLEU and the oracles of a data file."""
    from neko.data.formats import read_any
    from neko.eval.stats import dataset_stats, print_stats
    from neko.io import atomic_write_json, check_not_input
    from neko.schema import SchemaError

    options = {"normalizer": normalizer, "scoring": scoring, "bleu_tokenize": bleu_tokenize}
    kwargs = {k: v for k, v in options.items() if v is not None}
    try:
        if json_out is not None:
            check_not_input(json_out, file, tasks_config)
        registry = _registry(tasks_config)
        examples, read = read_any(
            file, format=format, task=task, skip_invalid=skip_invalid, registry=registry, top_n=top_n
        )
        stats = dataset_stats(examples, registry=registry, **kwargs)
    except (ValueError, KeyError, FileNotFoundError, SchemaError) as e:
        fail(e)
    if read.skipped:
        reasons = ", ".join(f"{k}: {v}" for k, v in read.reasons.items())
        typer.echo(f"skipped {read.skipped} invalid row(s) ({reasons}); first: {read.errors[0]}", err=True)
    print_stats(stats, _console())
    if json_out is not None:
        atomic_write_json(json_out, stats)
        typer.echo(f"wrote {json_out}")


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Attach `neko eval` to the main app and `neko data stats` to `neko data`."""
    app.command("eval")(eval_cmd)
    data_app.command("stats")(stats_cmd)
