import json

from transformers import AutoModelForCausalLM

from neko.experiment.evaluate import EvalPlan, subsample
from neko.experiment.quickstart import QuickstartConfig, run_quickstart
from neko.experiment.report import update_readme


def test_quickstart_end_to_end_on_tiny_base(tiny_benchmark, tmp_path):
    out = tmp_path / "qs"
    cfg = QuickstartConfig(
        base="tiny:llama",
        output_dir=str(out),
        data_dir=str(tiny_benchmark),
        num_experts=8,
        max_steps=2,
        train_time_s=0.0,
        micro_batch_size=2,
        routing_rows=6,
        guard_dev_rows=2,
        gpu=False,
        eval=EvalPlan(rows_per_task=3, max_new_tokens=6, fewshot_k=2),
    )
    summary = run_quickstart(cfg)
    report = summary["report"]
    assert set(report["tasks"]) == {"asr", "mt", "ocr", "tec-grammar", "tec-coherence"}
    asr = report["tasks"]["asr"]
    assert {"neko", "neko_guard", "1best", "rover"} <= set(asr["systems"])
    assert asr["oracles"]["nbest"]["wer"] == 0.0  # the reference is always among these hypotheses
    assert summary["typo_report"]["tasks"]["typo"]["systems"].keys() >= {
        "neko_0shot",
        "neko_5shot",
        "neko_guard_5shot",
    }
    md = summary["table_markdown"]
    assert "NeKo (ours)" in md and "no-harm guard" in md and "N-best oracle" in md and "typo WER 5-shot" in md
    # The saved model is a standard MoE checkpoint loadable without neko, with the task map saved.
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.num_local_experts == 8
    assert set(model.config.neko_task_to_expert) == {"asr", "mt", "ocr", "tec-grammar", "tec-coherence"}
    assert (out / "quickstart.json").exists() and (out / "results.md").exists()
    assert json.loads((out / "quickstart.json").read_text())["eval_rows"] == 6 * 3
    # The guard was tuned on dev rows only and saved beside the model, where `neko correct` finds it.
    from neko.infer.guard import load_guard

    assert summary["guard"]["dev_rows"] == 5 * 2 and load_guard(out / "model") is not None
    assert "NeKo + no-harm guard (dev-tuned)" in md
    test_ids = {json.loads(line)["id"] for line in (tiny_benchmark / "test.jsonl").read_text().splitlines()}
    dev_ids = {json.loads(line)["id"] for line in (out / "guard_dev.jsonl").read_text().splitlines()}
    assert dev_ids and not dev_ids & test_ids


def test_subsample_is_seeded_stratified_and_nested(tiny_benchmark):
    from neko.data.schema import read_jsonl

    rows = read_jsonl(tiny_benchmark / "test.jsonl")
    a = subsample(rows, 2, seed=1)
    assert a == subsample(rows, 2, seed=1)
    counts = {}
    for e in a:
        counts[e.task] = counts.get(e.task, 0) + 1
    assert set(counts.values()) == {2}
    assert len(subsample(rows, 0)) == len(rows)


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- neko:quickstart:start -->\nold\n<!-- neko:quickstart:end -->\noutro\n")
    assert update_readme(readme, "| a |\n", "neko:quickstart")
    text = readme.read_text()
    assert "old" not in text and "| a |" in text and text.startswith("intro") and text.endswith("outro\n")
    assert not update_readme(readme, "x", "neko:experiment")


def test_stats_markdown_lists_every_task_with_floor_and_oracles(tiny_benchmark):
    from neko.data.schema import read_jsonl
    from neko.eval.stats import dataset_stats
    from neko.experiment.report import stats_markdown

    splits = {s: dataset_stats(read_jsonl(tiny_benchmark / f"{s}.jsonl")) for s in ("train", "test")}
    md = stats_markdown(splits)
    lines = md.strip().splitlines()
    assert lines[0].startswith("| task | train rows | test rows |")
    typo = next(line for line in lines if line.startswith("| typo |"))
    assert "| 0 | 6 |" in typo  # never in train
    asr = next(line for line in lines if line.startswith("| asr |"))
    assert "WER 0.00" in asr  # N-best oracle: the reference is among the hypotheses
