import pytest

from neko.experiment.compare import ExperimentConfig, run_experiment
from neko.experiment.evaluate import EvalPlan


def _tiny(tiny_benchmark, tmp_path, *, rows=1, new_tokens=2, **over) -> ExperimentConfig:
    """An experiment on the tiny random base and benchmark (seconds per system)."""
    return ExperimentConfig(
        base="tiny:llama",
        output_dir=str(tmp_path / "exp"),
        data_dir=str(tiny_benchmark),
        micro_batch_size=2,
        eval=EvalPlan(rows_per_task=rows, max_new_tokens=new_tokens),
        **over,
    )


def test_experiment_config_rejects_unknown_systems():
    with pytest.raises(ValueError, match="unknown system"):
        ExperimentConfig(systems=["neko", "gpt5"])
    with pytest.raises(ValueError, match="steps"):
        ExperimentConfig(steps=0)


@pytest.mark.slow
def test_every_system_trains_at_equal_budget_and_is_scored_on_the_same_rows(tiny_benchmark, tmp_path):
    cfg = _tiny(tiny_benchmark, tmp_path, rows=2, new_tokens=4, steps=2, inference_top_k=[1])
    summary = run_experiment(cfg)
    report = summary["report"]
    expected = {"dense", "moe", "lora", "btx", "neko", "neko_top1"}
    for task in ("asr", "ocr", "mt"):
        assert expected <= set(report["tasks"][task]["systems"])
        assert report["tasks"][task]["n_scored"] == 2
    assert set(summary["averages"]) == {"1best"} | expected
    assert "Branch-Train-MiX" in summary["table_markdown"]
    assert summary["decode_seconds"] > 0 and all(v > 0 for v in summary["train_seconds"].values())
    # NeKo head to head with every other trained system, per task, from the same rows.
    assert set(report["tasks"]["asr"]["pairs"]) == {f"neko vs {n}" for n in ("dense", "moe", "lora", "btx")}
    results_md = (tmp_path / "exp" / "results.md").read_text()
    assert "Head to head" in results_md and "NeKo (ours) − MoE FFT" in results_md
    # Every output is kept, in a file neko eval re-scores to the same numbers.
    from typer.testing import CliRunner

    from neko.cli import app

    res = CliRunner().invoke(
        app,
        [
            "eval",
            "--pred",
            str(tmp_path / "exp" / "predictions.jsonl"),
            "--systems",
            "neko,moe",
            "--json",
            str(tmp_path / "r.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    import json

    again = json.loads((tmp_path / "r.json").read_text())["tasks"]["asr"]["systems"]
    assert again["neko"]["wer"] == report["tasks"]["asr"]["systems"]["neko"]["wer"]


@pytest.mark.slow
def test_a_rerun_reuses_finished_systems_and_retrains_when_the_config_changes(tiny_benchmark, tmp_path):
    def cfg(steps):
        return _tiny(tiny_benchmark, tmp_path, systems=["dense"], steps=steps)

    run_experiment(cfg(2))
    model = tmp_path / "exp" / "dense" / "model.safetensors"
    decoded = tmp_path / "exp" / "outputs" / "dense.json"
    first, first_decode = model.stat().st_mtime_ns, decoded.stat().st_mtime_ns
    run_experiment(cfg(2))  # e.g. after a crash in a later system: the finished one is not retrained
    assert model.stat().st_mtime_ns == first
    assert decoded.stat().st_mtime_ns == first_decode  # nor decoded again
    run_experiment(cfg(3))  # a different budget is a new run: never reuse a model trained for another
    assert model.stat().st_mtime_ns != first
    assert decoded.stat().st_mtime_ns != first_decode  # ... nor its outputs


def test_the_readme_names_the_command_that_reproduces_a_run():
    from dataclasses import asdict

    from neko.experiment.compare import command_line

    cfg = ExperimentConfig(steps=48, moe_layers="24-29", eval=EvalPlan(rows_per_task=24))
    line = command_line(asdict(cfg))
    assert line == "neko experiment --steps 48 --rows-per-task 24 --moe-layers 24-29"
    assert command_line(asdict(ExperimentConfig(steps=48, moe_layers=list(range(24, 30))))).endswith("24-29")
    odd = asdict(ExperimentConfig(moe_layers=[1, 5], systems=["neko", "moe"], precision="bf16"))
    assert command_line(odd).split(" --")[1:] == [
        "profile full",
        "steps 24",
        "rows-per-task 16",
        "moe-layers 1,5",
        "systems neko,moe",
    ]


@pytest.mark.slow
def test_btx_rerun_remerges_and_retrains_the_mix_when_a_branch_changed(tiny_benchmark, tmp_path):
    import os

    cfg = _tiny(tiny_benchmark, tmp_path, systems=["btx"], steps=10)
    run_experiment(cfg)
    btx = tmp_path / "exp" / "btx"
    merged, mix = btx / "merged" / "config.json", btx / "mix" / "model.safetensors"
    merged_t, mix_t = merged.stat().st_mtime_ns, mix.stat().st_mtime_ns
    run_experiment(cfg)  # nothing changed: nothing is redone
    assert (merged.stat().st_mtime_ns, mix.stat().st_mtime_ns) == (merged_t, mix_t)
    summary = btx / "branches" / "asr" / "neko_train.json"
    os.utime(summary, ns=(merged_t + 10**9, merged_t + 10**9))  # as if the branch had been retrained
    run_experiment(cfg)
    assert merged.stat().st_mtime_ns != merged_t and mix.stat().st_mtime_ns != mix_t
