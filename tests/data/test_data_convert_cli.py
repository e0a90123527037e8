"""`neko data convert` through typer's CliRunner: every sample converts; bad input exits 1 with a message."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from neko.commands.data import register
from neko.schema import read_jsonl
from neko.tasks import REGISTRY

runner = CliRunner()


@pytest.fixture(scope="module")
def app():
    app, data_app = typer.Typer(), typer.Typer()
    app.add_typer(data_app, name="data")
    register(app, data_app)
    return app


SAMPLE_ROWS = {
    "neko.jsonl": 6,
    "hyporadise.json": 5,
    "hyporadise_score.json": 3,
    "hyporadise_instruction.json": 3,
    "hyporadise_h2t.json": 4,
    "hyporadise.csv": 4,
    "hyporadise_score.csv": 4,
    "h2t_lora.json": 4,
    "hyporadise_pilot.json": 3,
    "hyporadise_pilot.parquet": 3,
    "hypr.parquet": 2,
    "hypr.jsonl": 2,
    "open_asr.jsonl": 4,
    "coedit.jsonl": 4,
    "pleias.jsonl": 3,
    "pleias.csv": 3,
    "pleias.parquet": 3,
    "translation.jsonl": 3,
}


@pytest.mark.parametrize("name", sorted(SAMPLE_ROWS))
def test_every_sample_converts_and_reads_back(app, samples, tmp_path, name):
    out = tmp_path / "out.jsonl"
    res = runner.invoke(app, ["data", "convert", str(samples / name), str(out)])
    assert res.exit_code == 0, res.output
    assert f"wrote {SAMPLE_ROWS[name]} rows to {out}" in res.output
    rows = read_jsonl(out, known_tasks=REGISTRY.names())
    assert len(rows) == SAMPLE_ROWS[name]
    # the converted file is itself detected as neko and converts to the same rows (a fixed point)
    again = tmp_path / "again.jsonl"
    assert runner.invoke(app, ["data", "convert", str(out), str(again)]).exit_code == 0
    assert again.read_text(encoding="utf-8") == out.read_text(encoding="utf-8")


def test_summary_lists_tasks_and_skips(app, tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [
        {"_id": "1", "task": "gec", "src": "Fix: a error", "tgt": "an error"},
        {"_id": "2", "task": "coherence", "src": "Fix: x. y", "tgt": "x y"},
        {"_id": "3", "task": "clarity", "src": "Clarify: z", "tgt": "z"},
        {"_id": "4", "task": "neutralize", "src": "Neutralize: w", "tgt": "w"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{oops\n")
    out = tmp_path / "out.jsonl"
    res = runner.invoke(app, ["data", "convert", str(src), str(out), "--skip-invalid"])
    assert res.exit_code == 0, res.output
    assert (
        "wrote 2 rows" in res.output and "tec-coherence: 1" in res.output and "tec-grammar: 1" in res.output
    )
    assert "skipped 3 invalid rows:" in res.output
    assert "unknown-task: 2" in res.output and "malformed-json: 1" in res.output
    assert f"(first: {src}:3: field 'task': CoEdIT task 'clarity'" in res.output


def test_bad_row_exits_1_naming_file_line_field_and_writes_nothing(app, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(
        json.dumps({"task": "asr", "input": ["a"]}) + "\n" + json.dumps({"task": "asr", "input": []})
    )
    out = tmp_path / "out.jsonl"
    res = runner.invoke(app, ["data", "convert", str(src), str(out)])
    assert res.exit_code == 2
    assert f"error: {src}:2: field 'input': empty N-best list" in res.output
    assert "--skip-invalid" in res.output
    assert not out.exists()


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--format", "hyporadis"], "Did you mean 'hyporadise'"),
        (["--task", "ocrr"], "Did you mean 'ocr'"),
    ],
)
def test_bad_options(app, samples, tmp_path, args, msg):
    res = runner.invoke(
        app, ["data", "convert", str(samples / "hyporadise.json"), str(tmp_path / "o.jsonl"), *args]
    )
    assert res.exit_code == 2 and msg in res.output


def test_missing_input(app, tmp_path):
    res = runner.invoke(app, ["data", "convert", str(tmp_path / "nope.json"), str(tmp_path / "o.jsonl")])
    assert res.exit_code == 2 and "no such file" in res.output


def test_truncate_dedup_task_and_tasks_config(app, samples, tmp_path):
    out = tmp_path / "o.jsonl"
    res = runner.invoke(
        app, ["data", "convert", str(samples / "pleias.jsonl"), str(out), "--truncate-chars", "10"]
    )
    assert res.exit_code == 0
    assert all(len(r.input) <= 10 and len(r.output) <= 10 for r in read_jsonl(out))
    res = runner.invoke(app, ["data", "convert", str(samples / "hyporadise.json"), str(out), "--dedup"])
    assert res.exit_code == 0 and read_jsonl(out)[2].input == ["<unk>", "yes"]
    res = runner.invoke(app, ["data", "convert", str(samples / "hypr.parquet"), str(out), "--top-n", "5"])
    assert res.exit_code == 0 and [len(r.input) for r in read_jsonl(out)] == [5, 5]
    cfg = tmp_path / "t.yaml"
    cfg.write_text("- name: kws\n  template: '{hypotheses}'\n  input_kind: nbest\n")
    res = runner.invoke(
        app,
        [
            "data",
            "convert",
            str(samples / "hyporadise.json"),
            str(out),
            "--task",
            "kws",
            "--tasks-config",
            str(cfg),
        ],
    )
    assert res.exit_code == 0 and "kws: 5" in res.output
    res = runner.invoke(
        app, ["data", "convert", str(samples / "pleias.jsonl"), str(out), "--truncate-chars", "0"]
    )
    assert res.exit_code != 0


def test_formats_listing(app):
    res = runner.invoke(app, ["data", "formats"])
    assert res.exit_code == 0 and "hyporadise-csv" in res.output and "translation" in res.output


def test_registered_on_the_real_cli(samples, tmp_path):
    from neko.cli import app as neko_app

    res = runner.invoke(
        neko_app, ["data", "convert", str(samples / "open_asr.jsonl"), str(tmp_path / "o.jsonl")]
    )
    assert res.exit_code == 0 and "wrote 4 rows" in res.output


def test_undetectable_format_exits_1_without_a_row_hint(app, tmp_path):
    src = tmp_path / "w.json"
    src.write_text('{\n "data": []\n}\n')
    res = runner.invoke(app, ["data", "convert", str(src), str(tmp_path / "o.jsonl")])
    assert res.exit_code == 2 and "could not detect the format" in res.output and "hint" not in res.output
