"""`neko` subcommands for the model area (thin wrappers over the library)."""

from __future__ import annotations

import typer


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Attach this area's subcommands to the main app (and to `neko data`)."""

    @app.command("routing-report")
    def routing_report_cmd(
        model: str = typer.Option(..., "--model", help="Model directory (save_pretrained + tokenizer)."),
        data: str = typer.Option(..., "--data", help="neko JSONL rows; each row's task labels its tokens."),
        out: str = typer.Option(..., "--out", help="Output directory for routing_report.json + heatmap PNG."),
        max_rows: int | None = typer.Option(None, "--max-rows", min=1, help="Use only the first N rows."),
        batch_size: int = typer.Option(8, "--batch-size", min=1),
        max_length: int = typer.Option(
            512, "--max-length", min=2, help="Truncate prompts to this many tokens."
        ),
    ) -> None:
        """Per layer and task: expert load, router entropy, dead experts, how often top-K picks f(T)."""
        from neko.model.stats import routing_report_from_dir

        js, png, rep = routing_report_from_dir(
            model, data, out, max_rows=max_rows, batch_size=batch_size, max_length=max_length
        )
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
