"""`neko eval` and `neko data stats` through the real CLI (typer CliRunner) on files in tmp dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neko.cli import app

runner = CliRunner()

ROWS = [
    {
        "id": "1",
        "task": "asr",
        "input": ["i red the book", "i read the book", "i read the book"],
        "output": "I read the book.",
    },
    {
        "id": "2",
        "task": "asr",
        "input": ["hello word", "hello world", "yellow world"],
        "output": "Hello world!",
    },
    {"id": "3", "task": "ocr", "input": "Tbe fox", "output": "The fox"},
]
PRED = ["i read the book", "hello word", "The fox"]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_eval_file_with_predictions_and_outputs(tmp_path: Path) -> None:
    pred = _write(tmp_path / "pred.jsonl", [dict(r, prediction=p) for r, p in zip(ROWS, PRED, strict=True)])
    out = tmp_path / "report.json"
    res = runner.invoke(
        app, ["eval", "--pred", str(pred), "--json", str(out), "--n-boot", "50"], terminal_width=200
    )
    assert res.exit_code == 0, res.output
    assert "asr: WER" in res.output and "normalizer: whisper" in res.output
    rep = json.loads(out.read_text())
    assert rep["systems"] == ["prediction"]
    assert rep["tasks"]["asr"]["systems"]["prediction"]["wer"] == 1 / 6
    assert rep["tasks"]["ocr"]["systems"]["prediction"]["wer"] == 0.0


def test_eval_with_refs_by_id_and_options(tmp_path: Path) -> None:
    ref = _write(tmp_path / "ref.jsonl", ROWS)
    pred = _write(
        tmp_path / "p.jsonl", [{"id": r["id"], "prediction": p} for r, p in zip(ROWS, PRED, strict=True)]
    )
    out = tmp_path / "r.json"
    args = [
        "eval",
        "--pred",
        f"mine={pred}",
        "--ref",
        str(ref),
        "--normalizer",
        "basic",
        "--baselines",
        "1best",
    ]
    res = runner.invoke(
        app,
        [*args, "--n-boot", "0", "--no-oracles", "--per-utterance", "--json", str(out)],
        terminal_width=200,
    )
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["normalizer"]["name"] == "basic" and rep["systems"] == ["mine"]
    assert set(rep["tasks"]["asr"]["systems"]) == {"mine", "1best"}
    assert (
        rep["tasks"]["asr"]["ids"] == ["1", "2"]
        and len(rep["tasks"]["asr"]["systems"]["mine"]["per_utt"]) == 2
    )


def test_eval_several_prediction_fields(tmp_path: Path) -> None:
    """`neko correct` writes prediction and prediction_unguarded: --systems scores both."""
    rows = [dict(r, prediction=p, prediction_unguarded=r["output"]) for r, p in zip(ROWS, PRED, strict=True)]
    pred = _write(tmp_path / "pred.jsonl", rows)
    out = tmp_path / "r.json"
    args = [
        "eval",
        "--pred",
        str(pred),
        "--systems",
        "prediction,prediction_unguarded,rover",
        "--n-boot",
        "20",
    ]
    res = runner.invoke(app, [*args, "--baselines", "none", "--json", str(out)], terminal_width=200)
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["systems"] == ["prediction", "prediction_unguarded"]
    assert set(rep["tasks"]["asr"]["systems"]) == {"prediction", "prediction_unguarded", "1best", "rover"}
    assert rep["tasks"]["asr"]["systems"]["prediction_unguarded"]["wer"] == 0.0
    res = runner.invoke(app, ["eval", "--pred", str(pred), "--systems", "nosuchfield"])
    assert res.exit_code == 2 and "field 'nosuchfield'" in res.output


def test_eval_mismatched_ids_is_a_clear_error(tmp_path: Path) -> None:
    ref = _write(tmp_path / "ref.jsonl", ROWS)
    pred = _write(tmp_path / "p.jsonl", [{"id": "1", "prediction": "x"}, {"id": "9", "prediction": "y"}])
    res = runner.invoke(app, ["eval", "--pred", str(pred), "--ref", str(ref)])
    assert res.exit_code == 2
    assert "ids do not match" in res.output and "'9'" in res.output and "Traceback" not in res.output


def test_eval_missing_reference_says_use_ref(tmp_path: Path) -> None:
    pred = _write(tmp_path / "p.jsonl", [{"id": "1", "task": "asr", "input": ["x"], "prediction": "x"}])
    res = runner.invoke(app, ["eval", "--pred", str(pred)])
    assert res.exit_code == 2 and "--ref" in res.output


def test_data_stats(tmp_path: Path) -> None:
    data = _write(tmp_path / "d.jsonl", ROWS)
    out = tmp_path / "stats.json"
    res = runner.invoke(app, ["data", "stats", str(data), "--json", str(out)], terminal_width=200)
    assert res.exit_code == 0, res.output
    stats = json.loads(out.read_text())
    assert stats["tasks"]["asr"]["nbest_size"] == {"min": 3, "mean": 3.0, "max": 3}
    assert stats["tasks"]["asr"]["oracle_nbest"]["wer"] == 0.0
    assert "asr" in res.output


def test_data_stats_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "task": "asr", "input": ["a"], "output": "a"}\n{not json\n', encoding="utf-8")
    res = runner.invoke(app, ["data", "stats", str(bad)])
    assert res.exit_code == 2 and "bad.jsonl:2" in res.output
    res = runner.invoke(app, ["data", "stats", str(bad), "--skip-invalid"], terminal_width=200)
    assert res.exit_code == 0 and "skipped 1 invalid row" in res.output


def test_data_stats_reads_any_supported_format(tmp_path: Path) -> None:
    """A HyPoradise JSON file (list of {input: 5-best, output}) is summarized without converting it."""
    rows = [{"input": r["input"], "output": r["output"]} for r in ROWS[:2]]
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps(rows), encoding="utf-8")
    out = tmp_path / "s.json"
    res = runner.invoke(app, ["data", "stats", str(hp), "--format", "hyporadise", "--json", str(out)])
    assert res.exit_code == 0, res.output
    stats = json.loads(out.read_text())
    assert stats["tasks"]["asr"]["rows"] == 2 and stats["tasks"]["asr"]["oracle_nbest"]["wer"] == 0.0


def test_eval_hyporadise_scoring_is_named_in_the_report(tmp_path: Path) -> None:
    pred = _write(tmp_path / "pred.jsonl", [dict(r, prediction=p) for r, p in zip(ROWS, PRED, strict=True)])
    out = tmp_path / "r.json"
    args = ["eval", "--pred", str(pred), "--scoring", "hyporadise", "--n-boot", "20", "--json", str(out)]
    res = runner.invoke(app, args, terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "scoring: hyporadise" in res.output and "utt-mean WER %" in res.output
    rep = json.loads(out.read_text())
    assert rep["scoring"]["name"] == "hyporadise" and rep["normalizer"]["name"] == "none"
    # text as written: "i read the book" vs "I read the book." is 2 errors in 4 words
    assert rep["tasks"]["asr"]["systems"]["prediction"]["mean_utt_wer"] == pytest.approx((2 / 4 + 2 / 2) / 2)
    res = runner.invoke(
        app, ["eval", "--pred", str(pred), "--scoring", "hyporadise", "--normalizer", "basic"]
    )
    assert res.exit_code == 2 and "--scoring corpus" in res.output


def test_data_stats_on_released_hyporadise_csv(tmp_path: Path) -> None:
    """The released CSV layout (source ends with ". ") gives 5-best lists, not 6; <unk> is an empty 1-best."""
    from neko.paths import SAMPLES_DIR

    out = tmp_path / "s.json"
    res = runner.invoke(
        app, ["data", "stats", str(SAMPLES_DIR / "hyporadise.csv"), "--json", str(out)], terminal_width=200
    )
    assert res.exit_code == 0, res.output
    assert "5/5.00/5" in res.output and "scoring: corpus" in res.output
    asr = json.loads(out.read_text())["tasks"]["asr"]
    assert asr["nbest_size"] == {"min": 5, "mean": 5.0, "max": 5}
    # the <unk> 1-best of row 3 scores as an empty output: 4 deletions of 18 reference words (whisper
    # normalizer: "we'll" -> "we will"); the other 1-bests are right after normalization
    assert asr["one_best"]["wer"] == pytest.approx(4 / 18)
    res = runner.invoke(
        app,
        ["data", "stats", str(SAMPLES_DIR / "hypr.parquet"), "--top-n", "5", "--scoring", "hyporadise"],
        terminal_width=200,
    )
    assert res.exit_code == 0, res.output
    assert "5/5.00/5" in res.output and "scoring: hyporadise" in res.output and "utt-mean WER %" in res.output


def test_eval_against_a_released_reference_file(tmp_path: Path) -> None:
    """--ref takes the released file itself (here the pretty-printed {input, output, score} shape,
    which has no ids): rows get the ids `neko correct` gives them, and the HyPoradise scoring applies."""
    from neko.data.formats import read_any
    from neko.paths import SAMPLES_DIR

    ref = SAMPLES_DIR / "hyporadise_score.json"
    rows, _ = read_any(ref)  # what `neko correct --input` numbers the rows as
    pred = _write(tmp_path / "p.jsonl", [{"id": e.id, "prediction": e.output} for e in rows])
    out = tmp_path / "r.json"
    args = ["eval", "--pred", str(pred), "--ref", str(ref), "--scoring", "hyporadise", "--n-boot", "0"]
    res = runner.invoke(app, [*args, "--json", str(out)], terminal_width=200)
    assert res.exit_code == 0, res.output
    asr = json.loads(out.read_text())["tasks"]["asr"]
    assert asr["rows"] == 3 and asr["systems"]["prediction"]["mean_utt_wer"] == 0.0
    assert asr["systems"]["1best"]["mean_utt_wer"] > 0.0
