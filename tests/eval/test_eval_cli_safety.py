"""`neko eval` never overwrites its inputs, never scores a row twice, and fails in one line."""

from __future__ import annotations

import json
from pathlib import Path

ROWS = [
    {"id": "1", "task": "ocr", "input": "Tbe fox", "output": "The fox", "prediction": "The fox"},
    {"id": "2", "task": "ocr", "input": "a dgo", "output": "a dog", "prediction": "a dgo"},
]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_eval_refuses_a_json_report_over_an_input(neko_cli, one_line_error, tmp_path):
    pred = _write(tmp_path / "pred.jsonl", ROWS)
    ref = _write(tmp_path / "ref.jsonl", [{k: v for k, v in r.items() if k != "prediction"} for r in ROWS])
    before = pred.read_bytes(), ref.read_bytes()
    res = neko_cli("eval", "--pred", pred, "--json", pred, "--n-boot", 0)
    one_line_error(res, f"output {pred} is the input {pred}")
    res = neko_cli("eval", "--pred", f"sys={pred}", "--ref", ref, "--json", ref, "--n-boot", 0)
    one_line_error(res, f"output {ref} is the input {ref}")
    assert (pred.read_bytes(), ref.read_bytes()) == before


def test_duplicate_ids_in_one_prediction_file_are_an_error(neko_cli, one_line_error, tmp_path):
    pred = _write(tmp_path / "pred.jsonl", [*ROWS, ROWS[0]])
    res = neko_cli("eval", "--pred", pred, "--n-boot", 0)
    one_line_error(res, f"{pred}:3: field 'id': duplicate id '1' (first on line 1)")


def test_unparsable_prediction_lines_and_unwritable_reports_are_one_line_errors(
    neko_cli, one_line_error, read_only_dir, tmp_path
):
    pred = _write(tmp_path / "pred.jsonl", ROWS)
    with pred.open("a") as fh:
        fh.write('{"id": ' + "9" * 5000 + "}\n")
    one_line_error(neko_cli("eval", "--pred", pred, "--n-boot", 0), f"{pred}:3: malformed JSON")
    pred = _write(tmp_path / "pred.jsonl", ROWS)
    out = read_only_dir / "report.json"
    one_line_error(neko_cli("eval", "--pred", pred, "--n-boot", 0, "--json", out), f"cannot write {out}")
