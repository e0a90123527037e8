import json

import pytest
import yaml

from neko.experiment.compare import PROFILES, SYSTEMS, ExperimentConfig, estimate_seconds, run_experiment
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


def test_experiment_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown system"):
        ExperimentConfig(systems=["neko", "gpt5"])
    with pytest.raises(ValueError, match="steps"):
        ExperimentConfig(steps=0)
    with pytest.raises(ValueError, match="aux_loss"):
        ExperimentConfig(aux_loss="heavy")
    with pytest.raises(ValueError, match="btx_branch_share"):
        ExperimentConfig(btx_branch_share=1.0)


@pytest.mark.slow
def test_every_system_every_paper_table_at_equal_budget(tiny_benchmark, tmp_path):
    cfg = _tiny(tiny_benchmark, tmp_path, rows=2, new_tokens=4, steps=10, inference_top_k=[1])
    summary = run_experiment(cfg)
    out = tmp_path / "exp"
    report = summary["report"]
    trained = [s for s in SYSTEMS if s != "single"]
    for task in ("asr", "ocr", "mt"):
        assert set(SYSTEMS) | {"neko_top1"} <= set(report["tasks"][task]["systems"])
        assert report["tasks"][task]["n_scored"] == 2
    # NeKo head to head with every other trained system, per task, from the same rows.
    assert set(report["tasks"]["asr"]["pairs"]) == {f"neko vs {n}" for n in SYSTEMS if n != "neko"}

    # Equal budgets: every system 10 steps of 2 rows; BTX = 5 branches x 1 + 5 mix steps; the five
    # single-task models 2 steps each.
    budgets = summary["budgets"]
    assert {n: b["steps"] for n, b in budgets.items() if n not in ("btx", "single")} == {
        n: "10 x 2" for n in SYSTEMS if n not in ("btx", "single")
    }
    assert budgets["btx"]["steps"] == "5 x 1 + 5 = 10 x 2" and budgets["single"]["steps"] == "5 x 2 = 10 x 2"
    assert all(b["tokens"] > 0 and b["seconds"] > 0 and b["tokens_per_s"] > 0 for b in budgets.values())

    def saved(run):
        return yaml.safe_load((out / run / "train_config.yaml").read_text())

    # The same auxiliary loss for both MoE systems (none, as in the paper); the ablation pair: standard.
    assert saved("moe")["routing"]["aux_loss"] == saved("neko")["routing"]["aux_loss"] == "off"
    assert saved("moe_lb")["routing"]["aux_loss"] == saved("neko_lb")["routing"]["aux_loss"] == "standard"
    # LoRA on the plain MoE, adapters on attention, FFN and experts, routers trained in full.
    lora = saved("lora")
    assert lora["mode"] == "lora" and lora["lora"]["base_mode"] == "moe"
    assert lora["lora"]["target_parameters"] == ["experts.gate_up_proj", "experts.down_proj"]
    assert {"q_proj", "o_proj", "down_proj"} <= set(lora["lora"]["target_modules"])
    # BTX: the MoE's 8 experts = 5 task branches + 3 seed experts.
    merged = json.loads((out / "btx" / "merged" / "config.json").read_text())
    assert merged["num_local_experts"] == 8
    experts = merged["neko_btx"]["experts"]
    assert [e.rsplit("/", 1)[-1] for e in experts[:5]] == ["asr", "mt", "ocr", "tec-coherence", "tec-grammar"]
    assert all(e.startswith("seed: ") for e in experts[5:]) and len(experts) == 8
    assert saved("single/ocr")["data"]["tasks"] == ["ocr"]

    # Table 1 / 4 analogs: every trained system on the held-out conditions, per held-out voice.
    zs = summary["zeroshot_report"]["tasks"]
    assert zs["asr"]["groups"] and set(zs["asr"]["groups"]) <= {"slt", "kal"}
    assert set(trained) <= set(zs["mt"]["systems"])
    assert zs["asr"]["n_scored"] == 2  # rows_per_task caps the zero-shot file too
    # Table 6 analog: the typo task 0- and 5-shot for every trained system.
    typo = summary["typo_report"]["tasks"]["typo"]["systems"]
    assert {f"{n}@{k}shot" for n in trained for k in (0, 5)} <= set(typo)
    results_md = (out / "results.md").read_text()
    for title in (
        "Training budget",
        "Tables 2 and 3",
        "Table 1",
        "Table 4",
        "Table 5",
        "Table 6",
        "Head to head",
    ):
        assert title in results_md, title
    assert "BTX (5 task branches + 3 seed experts" in results_md and "| voice " in results_md
    assert "no correction policy, no guard" in results_md

    # Every output is kept, in a file neko eval re-scores to the same numbers.
    from typer.testing import CliRunner

    from neko.cli import app

    res = CliRunner().invoke(
        app,
        [
            "eval",
            "--pred",
            str(out / "predictions.jsonl"),
            "--systems",
            "neko,single",
            "--json",
            str(tmp_path / "r.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "r.json").read_text())["tasks"]["asr"]["systems"]
    assert again["single"]["wer"] == report["tasks"]["asr"]["systems"]["single"]["wer"]


@pytest.mark.slow
def test_a_rerun_reuses_finished_systems_and_retrains_when_the_config_changes(tiny_benchmark, tmp_path):
    def cfg(steps):
        return _tiny(tiny_benchmark, tmp_path, systems=["dense"], steps=steps)

    run_experiment(cfg(2))
    model = tmp_path / "exp" / "dense" / "model.safetensors"
    decoded = tmp_path / "exp" / "outputs" / "dense.json"
    zs = tmp_path / "exp" / "outputs" / "dense@zeroshot.json"
    first, first_decode, first_zs = (
        model.stat().st_mtime_ns,
        decoded.stat().st_mtime_ns,
        zs.stat().st_mtime_ns,
    )
    run_experiment(cfg(2))  # e.g. after a crash in a later system: the finished one is not retrained
    assert model.stat().st_mtime_ns == first
    assert (decoded.stat().st_mtime_ns, zs.stat().st_mtime_ns) == (first_decode, first_zs)  # nor decoded
    run_experiment(cfg(3))  # a different budget is a new run: never reuse a model trained for another
    assert model.stat().st_mtime_ns != first
    assert decoded.stat().st_mtime_ns != first_decode  # ... nor its outputs


def test_the_readme_names_the_command_that_reproduces_a_run():
    from dataclasses import asdict

    from neko.experiment.compare import command_line

    reduced = dict(PROFILES["reduced"])
    cfg = ExperimentConfig(
        **{**reduced, "steps": 48, "moe_layers": "24-29", "eval": EvalPlan(rows_per_task=24)}
    )
    assert command_line(asdict(cfg)) == "neko experiment --steps 48 --rows-per-task 24 --moe-layers 24-29"
    more = ExperimentConfig(**{**reduced, "moe_layers": list(range(24, 30)), "systems": ["neko", "lora"]})
    assert command_line(asdict(more)).endswith("--moe-layers 24-29 --systems neko,lora")
    full = asdict(
        ExperimentConfig(moe_layers=[1, 5], systems=["neko", "moe"], precision="bf16", aux_loss="standard")
    )
    assert command_line(full).split(" --")[1:] == [
        "profile full",
        "steps 144",
        "rows-per-task 100",
        "moe-layers 1,5",
        "systems neko,moe",
        "aux-loss standard",
    ]


def test_the_reduced_profile_fits_two_hours_on_two_cores_at_three_times_the_old_budget():
    """Item 6 of issue 13, from the speeds measured on the 2-core machine (bench/NOTES.md): each
    system at least 3 x 48 steps of 4 rows, >= 100 test rows per task, under 2 hours in all."""
    cfg = ExperimentConfig(**PROFILES["reduced"])
    assert cfg.steps * cfg.micro_batch_size >= 3 * 48 * 4 and cfg.eval.rows_per_task >= 100
    assert {"dense", "moe", "neko"} <= set(cfg.systems)
    # the shipped benchmark: 5 seen tasks x 100 rows, typo 100 rows (0- and 5-shot), 200 zero-shot rows
    seconds = estimate_seconds(cfg, n_seen=500, n_typo=100, n_zeroshot=200)
    assert seconds < 2 * 3600, seconds / 3600
