"""`neko correct`, `neko serve`, `neko policy tune`: thin wrappers over neko.infer.

Every default comes from ``CorrectionOptions`` / ``ServerConfig``: a flag left unset keeps the
library's default, so the CLI and the Python API cannot disagree. The decoding flags `correct` and
`serve` share are each declared once below and map onto ``CorrectionOptions`` in one place
(:func:`_options`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from neko.commands import fail
from neko.infer.options import CorrectionOptions, ServerConfig

policy_app = typer.Typer(
    help="The correction policy: per task keep / rescore / generate (+ guard), chosen on dev data.",
    no_args_is_help=True,
)
_MODE_HELP = (
    "auto = each task's mode from the model's tuned policy (plain generation without one); "
    "generate, rescore (best N-best hypothesis under the model), keep, or constrained (generation from "
    "the input hypotheses' tokens only), for every task."
)

# ---- the flags `correct` and `serve` share (None = the CorrectionOptions default)

ModelDir = Annotated[Path, typer.Option("--model", help="Trained neko model directory.")]
TopK = Annotated[
    int, typer.Option("--top-k", help="Experts per token at inference [default: the model's own].")
]
MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", help="Most tokens generated per item.")]
CopyBias = Annotated[
    float,
    typer.Option(
        "--copy-bias", help="Logit bonus for the input's tokens, 0 = off [default: 1.5 on single texts]."
    ),
]
Mode = Annotated[str, typer.Option("--mode", help=_MODE_HELP + " [default: auto]")]
Guard = Annotated[bool, typer.Option("--guard/--no-guard", help="No-harm guard [default: on if tuned].")]
Precision = Annotated[
    str,
    typer.Option(
        "--precision",
        help="auto (bf16 where the GPU/CPU computes bf16 natively, else fp32) | fp32 | bf16 | fp16 "
        "[default: auto].",
    ),
]


def _device_flag(examples: str) -> Any:
    """``--device``; each command names the devices it shows as examples."""
    return typer.Option("--device", help=f"{examples} ... [default: auto].")


def _options(
    *,
    top_k: int | None,
    max_new_tokens: int | None,
    copy_bias: float | None,
    mode: str | None,
    guard: bool | None,
    device: str | None,
    batch_size: int | None = None,
    beams: int | None = None,
    precision: str | None = None,
) -> CorrectionOptions:
    """CorrectionOptions with the flags that were given; the rest keep the library's defaults."""
    overrides = dict(
        batch_size=batch_size,
        top_k_experts=top_k,
        num_beams=beams,
        max_new_tokens=max_new_tokens,
        copy_bias=copy_bias,
        device=device,
        dtype=precision,
        mode=mode,
        guard=None if guard is None else ("on" if guard else "off"),
    )
    return dataclasses.replace(CorrectionOptions(), **{k: v for k, v in overrides.items() if v is not None})


def correct(
    model: ModelDir,
    input: Path = typer.Option(..., "--input", help="File to correct (any supported format)."),
    output: Path = typer.Option(
        ..., "--output", help="Prediction rows (JSONL), scored by `neko eval --pred`."
    ),
    task: str = typer.Option(None, "--task", help="Task for rows without a task field."),
    format: str = typer.Option(None, "--format", help="Input format (default: from the file)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Items per batch [default: options]."),
    top_k: TopK = None,
    beams: int = typer.Option(None, "--beams", help="Beam size; 1 = greedy [default: 1]."),
    max_new_tokens: MaxNewTokens = None,
    copy_bias: CopyBias = None,
    mode: Mode = None,
    guard: Guard = None,
    all_outputs: bool = typer.Option(
        False, "--all-outputs", help="Also generate and rescore rows whose policy does not need it."
    ),
    max_rows: int = typer.Option(None, "--max-rows", help="Correct only the first N rows."),
    details: bool = typer.Option(False, "--details", help="Store log-probs and expert counts per row."),
    device: Annotated[str, _device_flag("cpu, cuda, cuda:1")] = None,
    precision: Precision = None,
    overwrite: bool = typer.Option(False, "--overwrite", help="Ignore a partial run and start over."),
) -> None:
    """Correct a file with a trained model; resumes an interrupted run of the same command."""
    from neko.infer.files import correct_file

    try:
        opts = _options(
            batch_size=batch_size,
            top_k=top_k,
            beams=beams,
            max_new_tokens=max_new_tokens,
            copy_bias=copy_bias,
            device=device,
            mode=mode,
            guard=guard,
            precision=precision,
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
            all_outputs=all_outputs,
        )
    except (ValueError, FileNotFoundError) as e:
        fail(e)
    typer.echo(json.dumps(summary, indent=2))


def serve(
    model: ModelDir,
    host: str = typer.Option(None, "--host", help="Bind address [default: 127.0.0.1]."),
    port: int = typer.Option(None, "--port", help="Port [default: 8000]."),
    api_key: str = typer.Option(None, "--api-key", help="Bearer token clients must send (or $NEKO_API_KEY)."),
    max_batch: int = typer.Option(None, "--max-batch", help="Most items decoded together [default: 16]."),
    max_queue: int = typer.Option(None, "--max-queue", help="Most waiting items before 429 [default: 256]."),
    timeout: float = typer.Option(None, "--timeout", help="Seconds per request before 504 [default: 30]."),
    max_wait_ms: float = typer.Option(None, "--max-wait-ms", help="Wait for a batch to fill [default: 5]."),
    top_k: TopK = None,
    max_new_tokens: MaxNewTokens = None,
    copy_bias: CopyBias = None,
    mode: Mode = None,
    guard: Guard = None,
    device: Annotated[str, _device_flag("cpu, cuda")] = None,
    precision: Precision = None,
    insecure: bool = typer.Option(
        False, "--insecure", help="Serve a non-loopback --host without an API key (refused otherwise)."
    ),
    allowed_host: list[str] = typer.Option(
        None, "--allowed-host", help="Also accept this name in the Host header (repeatable), e.g. a DNS name."
    ),
    max_connections: int = typer.Option(
        None, "--max-connections", help="Open connections at once; more get 503 [default: 256]."
    ),
    max_connections_per_client: int = typer.Option(
        None,
        "--max-connections-per-client",
        help="Open connections from one client address; more get 503 [default: 32]. Behind a reverse "
        "proxy every client has the proxy's address: set it to --max-connections there.",
    ),
) -> None:
    """Serve corrections over HTTP (POST /v1/correct, OpenAI-compatible /v1/chat/completions)."""
    from neko.infer.correct import Corrector
    from neko.infer.server import check_open_file_limit, serve

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
                    max_connections_per_client=max_connections_per_client,
                ).items()
                if v is not None
            },
            model_name=model.resolve().name,
        )
        check_open_file_limit(cfg)
        opts = _options(
            batch_size=cfg.max_batch,
            top_k=top_k,
            max_new_tokens=max_new_tokens,
            copy_bias=copy_bias,
            device=device,
            mode=mode,
            guard=guard,
            precision=precision,
        )
        corrector = Corrector.from_pretrained(model, opts)
    except (ValueError, FileNotFoundError) as e:
        fail(e)
    typer.echo(corrector.precision.describe(), err=True)
    serve(corrector, cfg)


@policy_app.command("tune")
def policy_tune(
    model: Path = typer.Option(
        ..., "--model", help="Trained neko model directory (neko_policy.json goes here)."
    ),
    dev: Path = typer.Option(None, "--dev", help="Dev rows with references (any supported format)."),
    pred: Path = typer.Option(
        None, "--pred", help="Instead of --dev: its predictions written with --all-outputs --details."
    ),
    max_harm: float = typer.Option(
        0.1, "--max-harm", help="Cap on the share of dev rows made worse than the 1-best (none: 1)."
    ),
    min_gain: float = typer.Option(
        0.02, "--min-gain", help="Least share of the 1-best's dev errors a mode must remove to be chosen."
    ),
    normalizer: str = typer.Option("whisper", "--normalizer", help="Text normalizer for WER."),
    max_rows: int = typer.Option(None, "--max-rows", help="Use only the first N dev rows."),
    task: str = typer.Option(None, "--task", help="Task for rows without a task field."),
) -> None:
    """Choose each task's mode (keep / rescore / generate) and thresholds on dev data and save them."""
    from neko.infer.files import read_input
    from neko.infer.policy import save_policy
    from neko.infer.tuning import rows_from_predictions, task_metrics, tune_on_dev, tune_policy
    from neko.tasks import load_prompt_config

    try:
        if (dev is None) == (pred is None):
            raise ValueError("give --dev DEV (decoded here) or --pred PRED (an earlier decode), one of them")
        if pred is None:
            rows, _ = read_input(dev, task=task)
            policy = tune_on_dev(
                model,
                rows[:max_rows] if max_rows else rows,
                max_harm_rate=max_harm,
                min_gain=min_gain,
                normalizer=normalizer,
            )
        else:
            registry, _ = load_prompt_config(model)
            lines = pred.read_text(encoding="utf-8").splitlines()
            tune_rows = rows_from_predictions((json.loads(x) for x in lines if x.strip()), registry)
            policy = tune_policy(
                tune_rows[:max_rows] if max_rows else tune_rows,
                metrics=task_metrics(registry, {r.task for r in tune_rows}),
                max_harm_rate=max_harm,
                min_gain=min_gain,
                normalizer=normalizer,
            )
            save_policy(model, policy)
    except (ValueError, FileNotFoundError) as e:
        fail(e)
    for name, rep in policy.report["tasks"].items():
        typer.echo(
            f"{name}: {rep['chosen']} (dev {rep['metric']} {rep['keep']:.4f} -> {rep['chosen_score']:.4f}, harm {rep['chosen_harm_rate']:.1%})"
        )
    typer.echo(f"saved {model / 'neko_policy.json'}")


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Attach this area's subcommands to the main app (and to `neko data`)."""
    app.command("correct")(correct)
    app.command("serve")(serve)
    app.add_typer(policy_app, name="policy")
