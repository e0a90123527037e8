"""Bad input: one clear error naming file, line and field; --skip-invalid counts and explains."""

from __future__ import annotations

import json

import pytest

from neko.data.formats import read_any
from neko.schema import MAX_TEXT_CHARS, SchemaError, read_jsonl

GOOD = json.dumps({"id": "ok", "task": "asr", "input": ["a b"], "output": "a b"})

CASES = [
    # (bad line, message regex, field, kind)
    ('{"task": "asr", "input": ["a"]', r"malformed JSON", None, "malformed-json"),
    (
        json.dumps({"task": "asr", "input": "a", "output": 3}),
        r"expected a string, got int",
        "output",
        "wrong-type",
    ),
    (json.dumps({"task": "asr", "input": ["a", 7]}), r"expected a string, got int", "input[1]", "wrong-type"),
    (json.dumps({"task": "asr", "input": []}), r"empty N-best list", "input", "empty-nbest"),
    (json.dumps({"task": "asr", "input": ["", "<UNK>", " "]}), r"empty N-best list", "input", "empty-nbest"),
    (
        json.dumps({"task": "asrr", "input": ["a"]}),
        r"unknown task 'asrr'; did you mean 'asr'",
        "task",
        "unknown-task",
    ),
    (json.dumps({"input": ["a"]}), r"missing; pass --task", "task", "missing-field"),
    (json.dumps({"task": "asr"}), r"missing", "input", "missing-field"),
    (json.dumps({"task": "ocr", "input": "   "}), r"empty input text", "input", "empty-text"),
    (json.dumps({"task": "ocr", "input": "x", "meta": [1]}), r"expected an object", "meta", "wrong-type"),
    (json.dumps({"task": "ocr", "input": "x", "id": 1.5}), r"expected a string", "id", "wrong-type"),
    (json.dumps([1, 2]), r"expected a JSON object, got list", None, "wrong-type"),
    (
        json.dumps({"task": "ocr", "input": "x" * (MAX_TEXT_CHARS + 1)}),
        r"exceeds the 100000 limit",
        "input",
        "too-long",
    ),
    (
        json.dumps({"task": "ocr", "input": ["a"]}),
        r"task 'ocr' takes a single text",
        "input",
        "wrong-input-kind",
    ),
]


@pytest.mark.parametrize("bad,msg,field,kind", CASES)
def test_bad_line_is_named_by_file_line_and_field(tmp_path, bad, msg, field, kind):
    p = tmp_path / "rows.jsonl"
    p.write_text(f"{GOOD}\n\n{bad}\n{GOOD}\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=msg) as info:
        read_any(p, format="neko")
    err = info.value
    assert (err.path, err.line, err.field, err.kind) == (str(p), 3, field, kind)
    assert str(err).startswith(f"{p}:3: " + (f"field '{field}': " if field else ""))
    ex, rep = read_any(p, format="neko", skip_invalid=True)
    assert [e.id for e in ex] == ["ok", "ok"] and rep.skipped == 1 and rep.reasons == {kind: 1}


def test_non_utf8_bytes_in_jsonl(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(GOOD.encode() + b"\n" + '{"task": "ocr", "input": "caf\xe9"}'.encode("latin-1") + b"\n")
    with pytest.raises(SchemaError, match=r"latin1\.jsonl:2: not UTF-8 \(byte 29: b'\\xe9'\); re-encode"):
        read_any(p)
    ex, rep = read_any(p, skip_invalid=True)
    assert len(ex) == 1 and rep.reasons == {"not-utf8": 1}


def test_non_utf8_bytes_in_json_array_cost_one_row(tmp_path):
    p = tmp_path / "arr.json"
    body = b'[\n {"input": ["a"], "output": "a"},\n {"input": ["caf\xe9"], "output": "b"},\n {"input": ["c"]}\n]\n'
    p.write_bytes(body)
    with pytest.raises(SchemaError, match=r"arr\.json:3: field 'input': not UTF-8"):
        read_any(p)
    ex, rep = read_any(p, skip_invalid=True)
    assert [e.input for e in ex] == [["a"], ["c"]] and rep.reasons == {"not-utf8": 1}


def test_non_utf8_bytes_in_csv(tmp_path):
    p = tmp_path / "h.csv"
    p.write_bytes(b"source,target\na. b,a\ncaf\xe9. x,y\nc,c\n")
    with pytest.raises(SchemaError, match=r"h\.csv:3: field 'input': not UTF-8"):
        read_any(p)
    ex, rep = read_any(p, skip_invalid=True)
    assert [e.output for e in ex] == ["a", "c"]


def test_malformed_json_array_element_is_skipped_and_scan_resumes(tmp_path):
    p = tmp_path / "arr.json"
    p.write_text(
        '[\n {"input": ["a"], "output": "a"},\n {"input": ["b" "output": "b"},\n {"input": ["c"]}\n]\n'
    )
    with pytest.raises(SchemaError, match=r"arr\.json:3: malformed JSON"):
        read_any(p, format="hyporadise")
    ex, rep = read_any(p, format="hyporadise", skip_invalid=True)
    assert [e.input for e in ex] == [["a"], ["c"]] and rep.reasons == {"malformed-json": 1}


def test_truncated_json_array(tmp_path):
    p = tmp_path / "cut.json"
    p.write_text('[\n {"input": ["a"], "output": "a"},\n {"input": ["b"], "out')
    with pytest.raises(SchemaError, match=r"cut\.json:3: malformed JSON"):
        read_any(p, format="hyporadise")
    ex, rep = read_any(p, format="hyporadise", skip_invalid=True)
    assert len(ex) == 1 and rep.skipped == 1  # the cut element (the scan ends there)


def test_csv_wrong_column_count(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text("source,target,best_hypo\na. b,a,a\nonly one column\n")
    with pytest.raises(
        SchemaError, match=r"h\.csv:3: expected 3 columns \(source, target, best_hypo\), got 1"
    ):
        read_any(p)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl: no such file; check the path"):
        read_any(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="is a directory"):
        read_any(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_not_a_parquet_file(tmp_path):
    p = tmp_path / "fake.parquet"
    p.write_text("hello")
    with pytest.raises(SchemaError, match=r"fake\.parquet: not a readable Parquet file"):
        read_any(p)


@pytest.mark.parametrize("fmt", ["hyporadise", "h2t-lora", "hyporadise-csv", "neko"])
def test_parquet_given_to_a_text_only_format_is_named_not_an_encoding_error(samples, fmt):
    with pytest.raises(SchemaError) as info:
        read_any(samples / "hyporadise_pilot.parquet", format=fmt, skip_invalid=True)
    msg = str(info.value)
    assert f"hyporadise_pilot.parquet: a Parquet file, but format '{fmt}' is read from" in msg
    assert "UTF-8" not in msg and info.value.kind == "unsupported-container"


def test_parquet_is_recognised_by_its_bytes_whatever_the_name(samples, tmp_path):
    renamed = tmp_path / "test-00000-of-00001.json"  # a hub download saved under the wrong name
    renamed.write_bytes((samples / "hyporadise_pilot.parquet").read_bytes())
    ex, rep = read_any(renamed)
    assert rep.format == "hyporadise-pilot" and len(ex) == 3


def test_text_starting_with_the_parquet_magic_is_still_text(tmp_path):
    # found by the property tests: a junk first line "PAR1" made a JSONL file read as Parquet
    p = tmp_path / "rows.jsonl"
    p.write_text(f"PAR1 junk\n{GOOD}\n")
    ex, rep = read_any(p, format="neko", skip_invalid=True)
    assert len(ex) == 1 and rep.reasons == {"malformed-json": 1}


def test_read_jsonl_skip_collects_errors(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text(f"{GOOD}\nnot json\n{GOOD}\n")
    errors: list[SchemaError] = []
    rows = read_jsonl(p, skip_invalid=True, errors=errors)
    assert len(rows) == 2 and len(errors) == 1 and errors[0].line == 2 and errors[0].kind == "malformed-json"


def test_jsonl_whose_first_line_is_a_list_is_still_jsonl(tmp_path):
    # found by the property tests: a junk "[]" first line made the whole file read as an empty array
    p = tmp_path / "rows.jsonl"
    p.write_text(f"[]\n{GOOD}\n{GOOD}\n")
    with pytest.raises(SchemaError, match=r"rows\.jsonl:1: expected a JSON object, got list"):
        read_any(p, format="neko")
    ex, rep = read_any(p, format="neko", skip_invalid=True)
    assert len(ex) == 2 and rep.skipped == 1
    one_line_array = tmp_path / "arr.json"
    one_line_array.write_text(json.dumps([json.loads(GOOD), json.loads(GOOD)]))
    assert len(read_any(one_line_array)[0]) == 2


def test_extra_data_after_json_array(tmp_path):
    p = tmp_path / "arr.json"
    p.write_text('[\n {"input": ["a"], "output": "a"}\n]\n{"input": ["b"]}\n')
    with pytest.raises(SchemaError, match=r"arr\.json:4: extra data after the closing"):
        read_any(p, format="hyporadise")


def test_damaged_element_in_indented_array_resyncs_at_element_level(tmp_path):
    def hyp(i, t):
        return {"hypothesis_index": i, "hypothesis": t}

    good = [{"id": f"r{i}", "reference": "a", "hypotheses": [hyp(0, "a"), hyp(1, "b")]} for i in range(3)]
    text = json.dumps(good, indent=2)
    # damage the middle element: drop the comma after its first hypothesis object
    start = text.index('"r1"')
    cut = text.index("},", start)
    damaged = text[:cut] + "}" + text[cut + 2 :]
    p = tmp_path / "oa.json"
    p.write_text(damaged)
    with pytest.raises(SchemaError, match="malformed JSON"):
        read_any(p, format="open-asr")
    ex, rep = read_any(p, format="open-asr", skip_invalid=True)
    # nested hypothesis objects are not mistaken for elements: one error, the two good rows kept
    assert [e.id for e in ex] == ["r0", "r2"] and rep.skipped == 1


def test_single_json_object_file_gets_a_hint(tmp_path):
    p = tmp_path / "wrapped.json"
    p.write_text(json.dumps({"data": [{"input": ["a"], "output": "a"}]}, indent=2))
    with pytest.raises(
        SchemaError, match=r"wrapped\.json:1: malformed JSON .*one pretty-printed JSON object"
    ):
        read_any(p, format="hyporadise")
