from __future__ import annotations

import json

from typer.testing import CliRunner

from neko.cli import app
from neko.paths import SAMPLES_DIR


def test_correct_then_eval_both_columns(tmp_path, model_dir):
    out = tmp_path / "preds.jsonl"
    src = SAMPLES_DIR / "neko.jsonl"
    args = ["correct", "--model", str(model_dir), "--input", str(src), "--output", str(out)]
    res = CliRunner().invoke(
        app, args + ["--guard", "--max-new-tokens", "6", "--batch-size", "4", "--top-k", "1", "--all-outputs"]
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    src_rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    assert [r["id"] for r in rows] == [r["id"] for r in src_rows]
    # guard on: every row says what was used; with --all-outputs the raw generation is kept beside
    # the final text on every row, also where the hypotheses agree and the policy keeps the 1-best
    assert all("prediction" in r and "prediction_generated" in r and "decision" in r for r in rows)
    agree = [r for r in rows if r["decision"]["reasons"] == ["hypotheses agree"]]
    assert [r["id"] for r in agree] == ["asr-0002"]  # '"no"' vs 'no' (and an <UNK> the model never sees)
    assert agree[0]["prediction"] == agree[0]["input"][0]
    report = tmp_path / "report.json"
    ev = CliRunner().invoke(
        app,
        [
            "eval",
            "--pred",
            str(out),
            "--systems",
            "prediction,prediction_generated",
            "--n-boot",
            "0",
            "--json",
            str(report),
        ],
    )
    assert ev.exit_code == 0, ev.output
    assert "prediction_generated" in report.read_text()


def test_correct_reports_bad_model_dir(tmp_path):
    src = SAMPLES_DIR / "neko.jsonl"
    res = CliRunner().invoke(
        app, ["correct", "--model", str(tmp_path), "--input", str(src), "--output", str(tmp_path / "o.jsonl")]
    )
    assert res.exit_code == 2 and "no config.json" in res.output


def test_help_lists_infer_commands():
    out = CliRunner().invoke(app, ["--help"]).output
    assert "correct" in out and "serve" in out and "guard" in out
    assert "--max-queue" in CliRunner().invoke(app, ["serve", "--help"]).output
