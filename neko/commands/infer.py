"""`neko correct`, `neko serve`, `neko guard tune`: thin wrappers over neko.infer.

Every default comes from ``CorrectionOptions`` / ``ServerConfig``: a flag left unset keeps the
library's default, so the CLI and the Python API cannot disagree.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import typer

guard_app = typer.Typer(
    help="No-harm guard: keep the 1-best when a correction looks implausible.", no_args_is_help=True
)


def _options(**overrides):
    from neko.infer.options import CorrectionOptions

    return dataclasses.replace(CorrectionOptions(), **{k: v for k, v in overrides.items() if v is not None})


def _fail(e: Exception) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


def correct(
    model: Path = typer.Option(..., "--model", help="Trained neko model directory."),
    input: Path = typer.Option(..., "--input", help="File to correct (any supported format)."),
    output: Path = typer.Option(
        ..., "--output", help="Prediction rows (JSONL), scored by `neko eval --pred`."
    ),
    task: str = typer.Option(None, "--task", help="Task for rows without a task field."),
    format: str = typer.Option(None, "--format", help="Input format (default: from the file)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Items per batch [default: options]."),
    top_k: int = typer.Option(None, "--top-k", help="Experts per token at inference [default: 2]."),
    beams: int = typer.Option(None, "--beams", help="Beam size; 1 = greedy [default: 1]."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Most tokens generated per item."),
    guard: bool = typer.Option(None, "--guard/--no-guard", help="No-harm guard [default: on if tuned]."),
    max_rows: int = typer.Option(None, "--max-rows", help="Correct only the first N rows."),
    details: bool = typer.Option(False, "--details", help="Store log-probs and expert counts per row."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... [default: auto]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Ignore a partial run and start over."),
) -> None:
    """Correct a file with a trained model; resumes an interrupted run of the same command."""
    from neko.infer.files import correct_file

    try:
        opts = _options(
            batch_size=batch_size,
            top_k_experts=top_k,
            num_beams=beams,
            max_new_tokens=max_new_tokens,
            device=device,
            guard=None if guard is None else ("on" if guard else "off"),
        )
        summary = correct_file(
            model,
            input,
            output,
            task=task,
            format=format,
            options=opts,
            details=details,
            max_rows=max_rows,
            overwrite=overwrite,
        )
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(json.dumps(summary, indent=2))


def serve(
    model: Path = typer.Option(..., "--model", help="Trained neko model directory."),
    host: str = typer.Option(None, "--host", help="Bind address [default: 127.0.0.1]."),
    port: int = typer.Option(None, "--port", help="Port [default: 8000]."),
    api_key: str = typer.Option(None, "--api-key", help="Bearer token clients must send (or $NEKO_API_KEY)."),
    max_batch: int = typer.Option(None, "--max-batch", help="Most items decoded together [default: 16]."),
    max_queue: int = typer.Option(None, "--max-queue", help="Most waiting items before 429 [default: 256]."),
    timeout: float = typer.Option(None, "--timeout", help="Seconds per request before 504 [default: 30]."),
    max_wait_ms: float = typer.Option(None, "--max-wait-ms", help="Wait for a batch to fill [default: 5]."),
    top_k: int = typer.Option(None, "--top-k", help="Experts per token at inference [default: 2]."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Most tokens generated per item."),
    guard: bool = typer.Option(None, "--guard/--no-guard", help="No-harm guard [default: on if tuned]."),
    device: str = typer.Option(None, "--device", help="cpu, cuda ... [default: auto]."),
    insecure: bool = typer.Option(
        False, "--insecure", help="Serve a non-loopback --host without an API key (refused otherwise)."
    ),
    allowed_host: list[str] = typer.Option(
        None, "--allowed-host", help="Also accept this name in the Host header (repeatable), e.g. a DNS name."
    ),
    max_connections: int = typer.Option(
        None, "--max-connections", help="Open connections at once; more get 503 [default: 256]."
    ),
) -> None:
    """Serve corrections over HTTP (POST /v1/correct, OpenAI-compatible /v1/chat/completions)."""
    from neko.infer.correct import Corrector
    from neko.infer.server import ServerConfig, check_open_file_limit, serve

    key = api_key or os.environ.get("NEKO_API_KEY") or None
    try:
        cfg = dataclasses.replace(
            ServerConfig(),
            **{
                k: v
                for k, v in dict(
                    host=host,
                    port=port,
                    api_key=key,
                    max_batch=max_batch,
                    max_queue=max_queue,
                    timeout=timeout,
                    max_wait_ms=max_wait_ms,
                    insecure=insecure or None,
                    allowed_hosts=tuple(allowed_host) if allowed_host else None,
                    max_connections=max_connections,
                ).items()
                if v is not None
            },
            model_name=model.resolve().name,
        )
        check_open_file_limit(cfg)
        opts = _options(
            batch_size=cfg.max_batch,
            top_k_experts=top_k,
            max_new_tokens=max_new_tokens,
            device=device,
            guard=None if guard is None else ("on" if guard else "off"),
        )
        corrector = Corrector.from_pretrained(model, opts)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    serve(corrector, cfg)


@guard_app.command("tune")
def guard_tune(
    model: Path = typer.Option(
        ..., "--model", help="Trained neko model directory (neko_guard.json goes here)."
    ),
    dev: Path = typer.Option(..., "--dev", help="Dev rows with references (any supported format)."),
    pred: Path = typer.Option(
        None, "--pred", help="Existing unguarded predictions for --dev (skips decoding)."
    ),
    max_harm: float = typer.Option(
        None, "--max-harm", help="Cap on the share of rows made worse (e.g. 0.05)."
    ),
    normalizer: str = typer.Option("whisper", "--normalizer", help="Text normalizer for WER."),
    max_rows: int = typer.Option(None, "--max-rows", help="Use only the first N dev rows."),
    task: str = typer.Option(None, "--task", help="Task for rows without a task field."),
) -> None:
    """Pick guard thresholds on dev data (minimize corpus WER, optional harm cap) and save them."""
    from neko.infer.files import correct_file
    from neko.infer.guard import save_guard, tune_guard

    try:
        if pred is None:
            pred = model / "neko_guard_dev_predictions.jsonl"
            correct_file(
                model, dev, pred, task=task, options=_options(guard="off"), details=True, max_rows=max_rows
            )
        rows = [json.loads(line) for line in pred.read_text(encoding="utf-8").splitlines() if line.strip()]
        guard = tune_guard(rows, max_harm_rate=max_harm, normalizer=normalizer)
        path = save_guard(model, guard)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(json.dumps(guard.to_dict(), indent=2))
    typer.echo(f"saved {path}")


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Attach this area's subcommands to the main app (and to `neko data`)."""
    app.command("correct")(correct)
    app.command("serve")(serve)
    app.add_typer(guard_app, name="guard")
