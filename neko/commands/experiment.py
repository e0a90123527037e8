"""`neko quickstart` and `neko experiment`: the main job and the paper's comparison."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from neko.commands import fail
from neko.experiment.config import QuickstartConfig
from neko.experiment.rows import EvalPlan


def quickstart_cmd(
    base: str = typer.Option("smollm2", help="Offline base name, model directory, or tiny:llama."),
    output_dir: str = typer.Option("runs/quickstart", "--output-dir", "-o"),
    data_dir: str = typer.Option(None, help="Benchmark directory (default: the shipped data/benchmark)."),
    steps: int = typer.Option(
        QuickstartConfig.steps, help="Optimizer steps (fixed work: the same table on every machine)."
    ),
    train_time_s: float = typer.Option(
        0.0, help="Stop training after this many seconds instead (machine-dependent; 0 = off)."
    ),
    rows_per_task: int = typer.Option(EvalPlan.rows_per_task, help="Test rows decoded per task (0 = all)."),
    policy_dev_rows: int = typer.Option(
        QuickstartConfig.policy_dev_rows,
        help="Dev rows per task the correction policy is tuned on (0 = plain generation; GPU: 100).",
    ),
    moe_layers: str = typer.Option(
        None, help='Layers made MoE, e.g. "22-29" (default: all on a GPU, the last 6 on CPU).'
    ),
    train_layers: str = typer.Option(
        None,
        help='Layers that train: "all" (embeddings frozen), "moe", "-12:" ... (default: every weight).',
    ),
    gpu: bool = typer.Option(None, "--gpu/--cpu", help="Force the GPU or CPU profile (default: auto)."),
    readme: str = typer.Option(None, help="Also paste the results table into this README."),
    reuse_model: bool = typer.Option(
        False,
        "--reuse-model",
        help="Keep a finished model trained with this exact config in OUTPUT_DIR/model and redo only "
        "policy tuning, decoding and the report (training files compared by content).",
    ),
) -> None:
    """Up-cycle SmolLM2 to an 8-expert NeKo, train it task-guided, tune its policy, evaluate, report."""
    from neko.experiment.quickstart import run_quickstart

    try:
        cfg = QuickstartConfig(
            base=base,
            output_dir=output_dir,
            steps=steps,
            train_time_s=train_time_s,
            moe_layers=moe_layers or None,
            train_layers=train_layers or None,
            policy_dev_rows=policy_dev_rows,
            gpu=gpu,
            eval=EvalPlan(rows_per_task=rows_per_task),
            reuse_model=reuse_model,
        )
        if data_dir:
            cfg = replace(cfg, data_dir=data_dir)
        summary = run_quickstart(cfg)
    except (FileNotFoundError, ValueError) as e:
        fail(e)
    if readme:
        _paste(readme, "quickstart", summary)


def experiment_cmd(
    profile: str = typer.Option(
        "reduced",
        help="reduced (2-core CPU: dense, MoE, NeKo, LoRA, BTX, single-task, NeKo top-1/3; 2.5-4.7 h "
        "estimated) or full (one GPU: every system, every test row).",
    ),
    base: str = typer.Option("smollm2", help="Offline base name, model directory, or tiny:llama."),
    output_dir: str = typer.Option("runs/experiment", "--output-dir", "-o"),
    data_dir: str = typer.Option(None, help="Benchmark directory (default: the shipped data/benchmark)."),
    systems: str = typer.Option(
        None,
        help="Comma-separated systems: dense,moe,neko,lora,btx,single,moe_lb,neko_lb (overrides the profile).",
    ),
    steps: int = typer.Option(None, help="Optimizer steps per system (overrides the profile)."),
    rows_per_task: int = typer.Option(
        None,
        help="Test rows per task other than ASR, typo and zero-shot MT included (0 = all; overrides "
        "the profile: reduced 80, full all).",
    ),
    asr_rows_per_domain: int = typer.Option(
        None,
        help="ASR test rows per recognizer domain, and zero-shot ASR rows per domain and held-out "
        "condition (0 = all; overrides the profile: reduced 40, full all).",
    ),
    moe_layers: str = typer.Option(
        None,
        help='Layers made MoE, e.g. "22-29" (default: all; the reduced profile on smollm2: 24-29).',
    ),
    inference_top_k: str = typer.Option(
        None,
        help='Extra NeKo inference top-K settings, e.g. "1,3" ("none": no extra; overrides the profile).',
    ),
    aux_loss: str = typer.Option(
        "off", help="Load-balancing loss of both MoE systems: off (as in the paper), standard or free."
    ),
    readme: str = typer.Option(None, help="Also paste the comparison tables into this README."),
    estimate_only: bool = typer.Option(
        False, "--estimate-only", help="Print the rows, decodes and estimated CPU time, then stop."
    ),
) -> None:
    """Dense FFT vs MoE FFT vs MoE LoRA vs BTX vs single-task (dense) vs NeKo at an equal training
    budget, every system decoded greedily with no copy bias, no policy and no guard: analogs of the
    paper's Table 1 (zero-shot correction of Whisper tiny.en N-best on held-out conditions), Tables
    2/3 (seen tasks, ASR per recognizer; MT = English -> pivot -> English round-trip correction, not
    translation), Table 4 (round trips through held-out pivots), Tables 5 and 6, + NeKo at top-1/3.
    WER after the Whisper normalizer; BLEU = sacrebleu 13a on raw text."""
    from neko.experiment.compare import plan_experiment, run_experiment
    from neko.experiment.config import CPU_MOE_LAYERS, PROFILES, ExperimentConfig

    if profile not in PROFILES:
        fail(f"--profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    kw = dict(PROFILES[profile])
    if steps is not None:
        kw["steps"] = steps
    if rows_per_task is not None:
        kw["eval"] = replace(kw["eval"], rows_per_task=rows_per_task)
    if asr_rows_per_domain is not None:
        kw["asr_rows_per_domain"] = asr_rows_per_domain
    if systems:
        kw["systems"] = [s.strip() for s in systems.split(",") if s.strip()]
    if data_dir:
        kw["data_dir"] = data_dir
    try:
        if inference_top_k is not None:
            spec = inference_top_k.strip().lower()
            try:
                kw["inference_top_k"] = (
                    [] if spec == "none" else [int(k) for k in spec.split(",") if k.strip()]
                )
            except ValueError:
                raise ValueError(
                    f"--inference-top-k {inference_top_k!r}: give integers like 1,3 or none"
                ) from None
        layers = moe_layers or None
        if layers is None and profile == "reduced" and base == "smollm2":
            layers = CPU_MOE_LAYERS
        cfg = ExperimentConfig(base=base, output_dir=output_dir, moe_layers=layers, aux_loss=aux_loss, **kw)
        if estimate_only:
            plan_experiment(cfg)
            return
        summary = run_experiment(cfg)
    except (FileNotFoundError, ValueError) as e:
        fail(e)
    if readme:
        _paste(readme, "experiment", summary)


def report_cmd(
    results: str = typer.Argument(
        ...,
        help="quickstart.json / experiment.json from a run, or a benchmark directory (data/benchmark).",
    ),
    readme: str = typer.Option("README.md", help="README with <!-- neko:NAME:start/end --> markers."),
) -> None:
    """Paste a run's results table (or the benchmark's stats) into the README; never hand-copied."""
    path = Path(results)
    if not path.exists():
        fail(f"{path}: not found; run `neko quickstart` (or `neko data build`) first")
    if path.is_dir():
        from neko.eval.stats import dataset_stats
        from neko.experiment.publish import asr_domains_markdown, stats_markdown, update_readme
        from neko.schema import read_jsonl

        try:
            splits = {s: dataset_stats(read_jsonl(path / f"{s}.jsonl")) for s in ("train", "dev", "test")}
            block = f"From `neko report {results}` (= `neko data stats` per split; whisper normalizer).\n\n"
            asr = asr_domains_markdown(path)
            updated = update_readme(readme, block + stats_markdown(splits) + asr, "neko:data")
        except (ValueError, FileNotFoundError) as e:
            fail(e)
        if not updated:
            fail(f"{readme} has no <!-- neko:data:start/end --> markers")
        typer.echo(f"updated the benchmark table in {readme}")
        return
    from neko.experiment.publish import read_results

    try:
        summary = read_results(path)
    except ValueError as e:
        fail(e)
    name = "experiment" if path.name.startswith("experiment") else "quickstart"
    _paste(readme, name, summary, source=str(path))


def _paste(readme: str, name: str, summary: dict, source: str = "the run's summary") -> None:
    from neko.experiment.publish import results_block, update_readme

    try:
        updated = update_readme(readme, results_block(name, summary, source), f"neko:{name}")
    except ValueError as e:
        fail(e)
    if updated:
        typer.echo(f"updated the {name} table in {readme}")
    else:
        fail(f"{readme} has no <!-- neko:{name}:start --> / <!-- neko:{name}:end --> markers")


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Attach `quickstart`, `experiment` and `report` to the main app."""
    app.command("quickstart")(quickstart_cmd)
    app.command("experiment")(experiment_cmd)
    app.command("report")(report_cmd)
