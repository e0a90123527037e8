import json

import pytest
from transformers import AutoModelForCausalLM

from neko.experiment.config import QuickstartConfig
from neko.experiment.publish import results_block, update_readme
from neko.experiment.quickstart import run_quickstart
from neko.experiment.rows import EvalPlan, subsample


def test_quickstart_end_to_end_on_tiny_base(tiny_benchmark, tmp_path):
    out = tmp_path / "qs"
    cfg = QuickstartConfig(
        base="tiny:llama",
        output_dir=str(out),
        data_dir=str(tiny_benchmark),
        num_experts=8,
        steps=2,
        micro_batch_size=2,
        routing_rows=6,
        policy_dev_rows=3,
        asr_rows_per_domain=3,
        asr_dev_rows_per_domain=3,
        gpu=False,
        eval=EvalPlan(rows_per_task=3, max_new_tokens=6, fewshot_k=2),
    )
    summary = run_quickstart(cfg)
    report = summary["report"]
    assert set(report["tasks"]) == {"asr", "mt", "ocr", "tec-grammar", "tec-coherence"}
    asr, ocr = report["tasks"]["asr"], report["tasks"]["ocr"]
    # N-best tasks: the LM rescoring baseline and NeKo's rescoring; single-text tasks: neither
    assert {"lm_base", "neko_raw", "neko_rescore", "neko", "1best", "rover"} <= set(asr["systems"])
    assert {"neko_raw", "neko", "1best"} <= set(ocr["systems"]) and "neko_rescore" not in ocr["systems"]
    assert asr["oracles"]["nbest"]["wer"] == 0.0  # the reference is always among these hypotheses
    assert summary["typo_report"]["tasks"]["typo"]["systems"].keys() >= {
        "neko_raw_0shot",
        "neko_raw_5shot",
        "neko_0shot",
        "neko_5shot",
    }
    md = summary["table_markdown"]
    for label in ("NeKo final (policy + guard)", "NeKo raw generation", "LM rescoring", "N-best oracle"):
        assert label in md
    assert "typo WER 5-shot" in md
    # The saved model is a standard MoE checkpoint loadable without neko, with the task map saved.
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.num_local_experts == 8
    assert set(model.config.neko_task_to_expert) == {"asr", "mt", "ocr", "tec-grammar", "tec-coherence"}
    assert (out / "quickstart.json").exists() and (out / "results.md").exists()
    # 5 tasks x 3 rows, and ASR 3 rows per domain: PocketSphinx, Whisper, Whisper on held-out conditions
    assert json.loads((out / "quickstart.json").read_text())["eval_rows"] == 5 * 3 + 3 * 3
    groups = summary["asr_groups"]
    assert set(groups["domain"]) == {"pocketsphinx", "whisper-tiny.en", "whisper-tiny.en 0-shot"}
    assert set(groups["domain,condition"]) >= {"whisper-tiny.en 0-shot / unseen noise babble"}
    assert "ASR by recognizer domain" in md and "whisper-tiny.en 0-shot" in md
    # held-out conditions stay out of the main table's ASR column (3 PocketSphinx + 3 Whisper rows)
    assert asr["rows"] == 6
    # The policy was tuned on dev rows only and saved beside the model, where `neko correct` finds it.
    from neko.infer.policy import load_policy

    # dev: 3 rows per seen task, ASR from the neural recognizer's domain only
    assert summary["policy"]["dev_rows_per_task"] == {
        t: 3 for t in ("asr", "mt", "ocr", "tec-coherence", "tec-grammar")
    }
    assert load_policy(out / "model") is not None
    test_ids = {json.loads(line)["id"] for line in (tiny_benchmark / "test.jsonl").read_text().splitlines()}
    dev_ids = {json.loads(line)["id"] for line in (out / "policy_dev.jsonl").read_text().splitlines()}
    assert dev_ids and not dev_ids & test_ids
    # every test output is kept with what the policy used for it
    preds = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 * 3 + 3 * 3 and all(p["used"] in ("generated", "rescored", "input") for p in preds)
    # ... and `neko eval` re-scores every system of the table from that file, LM rescoring included
    from neko.eval.predictions import load_predictions
    from neko.eval.score import score_rows

    fields = ["prediction", "prediction_generated", "prediction_rescored", "prediction_lm_base"]
    scored = load_predictions([out / "test_predictions.jsonl"], fields=fields)
    again = score_rows([r for r in scored if not r.example.meta.get("zeroshot")])["tasks"]
    lm = {t: next(v for k, v in again[t]["systems"].items() if k.endswith("lm_base")) for t in again}
    assert lm["asr"]["wer"] == pytest.approx(report["tasks"]["asr"]["systems"]["lm_base"]["wer"])
    assert lm["ocr"]["wer"] == pytest.approx(report["tasks"]["ocr"]["systems"]["1best"]["wer"])


def test_quickstart_is_deterministic(tiny_benchmark, tmp_path):
    """Fixed steps, greedy decoding, seeded subsets: two runs print the same table."""
    tables = []
    for name in ("a", "b"):
        cfg = QuickstartConfig(
            base="tiny:llama",
            output_dir=str(tmp_path / name),
            data_dir=str(tiny_benchmark),
            steps=2,
            micro_batch_size=2,
            routing_rows=0,
            policy_dev_rows=2,
            gpu=False,
            eval=EvalPlan(rows_per_task=2, max_new_tokens=4, fewshot_k=1),
        )
        tables.append(run_quickstart(cfg)["table_markdown"])
    assert tables[0] == tables[1]


def test_compact_summary_fits_80_columns(tiny_benchmark):
    from neko.experiment.evaluate import score_system_outputs
    from neko.experiment.quickstart import SYSTEM_LABELS
    from neko.experiment.report import compact_summary
    from neko.schema import read_jsonl

    rows = [e for e in read_jsonl(tiny_benchmark / "test.jsonl") if e.task != "typo"]
    outs = [e.output for e in rows]
    rep = score_system_outputs(
        rows, {k: outs for k in ("lm_base", "neko_raw", "neko_rescore", "neko")}, n_boot=50
    )
    lines = compact_summary(rep, None, SYSTEM_LABELS)
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[2].startswith("asr WER") and "0.00" in lines[2]
    # Every task's row keeps the header's columns, the longest task name included.
    rows_ = [line for line in lines[2:] if line.split()[0] in {e.task for e in rows}]
    assert len(rows_) == 5 and any(line.startswith("tec-coherence WER") for line in rows_)
    final_col = lines[0].index("final") + len("final")
    assert all(line[final_col - 4 : final_col].strip() for line in rows_), lines
    assert " ".join(lines[-2:]).count("NeKo") >= 3  # the legend names every column


def test_subsample_is_seeded_stratified_and_nested(tiny_benchmark):
    from neko.schema import read_jsonl

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
    from neko.eval.stats import dataset_stats
    from neko.experiment.publish import stats_markdown
    from neko.schema import read_jsonl

    splits = {s: dataset_stats(read_jsonl(tiny_benchmark / f"{s}.jsonl")) for s in ("train", "test")}
    md = stats_markdown(splits)
    lines = md.strip().splitlines()
    assert lines[0].startswith("| task | train rows | test rows |")
    typo = next(line for line in lines if line.startswith("| typo |"))
    assert "| 0 | 6 |" in typo  # never in train
    asr = next(line for line in lines if line.startswith("| asr |"))
    assert "WER 0.00" in asr  # N-best oracle: the reference is among the hypotheses


def test_device_profiles():
    # CPU default for the shipped base: last 6 layers MoE, every weight trains, a fixed number of
    # steps (never a time budget), so the table does not depend on the machine.
    cpu = QuickstartConfig(gpu=False).for_device()
    assert cpu.moe_layers == [24, 25, 26, 27, 28, 29] and cpu.train_layers is None
    assert cpu.steps > 0 and cpu.train_time_s == 0
    assert QuickstartConfig(gpu=False, train_layers="moe").for_device().train_layers == "moe"
    # Another base keeps its own layout: nothing is frozen unless asked.
    other = QuickstartConfig(base="tiny:llama", gpu=False).for_device()
    assert other.moe_layers is None and other.train_layers is None
    gpu = QuickstartConfig(gpu=True).for_device()
    assert gpu.epochs == 3 and gpu.steps == 0 and gpu.train_layers is None and gpu.eval.rows_per_task == 0
    # Decoding precision is fixed per profile, never "auto": bf16, which auto would pick on CPUs with
    # native bf16, changes some outputs, and the CPU table must be the same on every CPU.
    assert cpu.eval.dtype == "fp32" and gpu.eval.dtype == "bf16"


def test_the_readme_caption_names_the_command_and_the_decoding_precision():
    summary = {
        "machine": "CPU",
        "elapsed_s": 12.3,
        "table_markdown": "| t |\n|---|\n",
        "config": {"reuse_model": True, "eval": {"dtype": "fp32"}},
    }
    head = results_block("quickstart", summary, "qs.json").splitlines()[0]
    assert head == "Measured on CPU, decoded in fp32 by `neko quickstart --reuse-model` in 12 s."
    summary["config"] = {}  # a run from before both were recorded
    assert results_block("quickstart", summary, "qs.json").splitlines()[0] == (
        "Measured on CPU by `neko quickstart` in 12 s."
    )


def test_reuse_model_skips_training_only_for_the_same_config(tiny_benchmark, tmp_path):
    """--reuse-model keeps a finished model of exactly this training config (data by content) and
    prints the same table; any other config trains anew."""
    base = dict(
        base="tiny:llama",
        output_dir=str(tmp_path / "qs"),
        data_dir=str(tiny_benchmark),
        steps=2,
        micro_batch_size=2,
        routing_rows=0,
        policy_dev_rows=2,
        asr_rows_per_domain=2,
        asr_dev_rows_per_domain=2,
        gpu=False,
        eval=EvalPlan(rows_per_task=2, max_new_tokens=4, fewshot_k=1),
    )
    first = run_quickstart(QuickstartConfig(**base))
    weights = tmp_path / "qs" / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = run_quickstart(QuickstartConfig(**base, reuse_model=True))
    assert weights.stat().st_mtime_ns == stamp  # not retrained
    assert again["table_markdown"] == first["table_markdown"]
    assert again["train"]["steps"] == first["train"]["steps"] == 2
    other = run_quickstart(QuickstartConfig(**{**base, "steps": 3}, reuse_model=True))
    assert other["train"]["steps"] == 3 and weights.stat().st_mtime_ns != stamp
