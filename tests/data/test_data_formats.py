"""Format detection, the --format override, did-you-mean errors and the read report."""

from __future__ import annotations

import json

import pytest

from neko.data.formats import FORMATS, FormatError, detect_format, get_reader, read_any

SAMPLE_FORMATS = {
    "neko.jsonl": "neko",
    "hyporadise.json": "hyporadise",
    "hyporadise_score.json": "hyporadise",
    "hyporadise_instruction.json": "hyporadise",
    "hyporadise_h2t.json": "hyporadise",
    "hyporadise.csv": "hyporadise-csv",
    "hyporadise_score.csv": "hyporadise-csv",
    "h2t_lora.json": "h2t-lora",
    "hyporadise_pilot.json": "hyporadise-pilot",
    "hyporadise_pilot.parquet": "hyporadise-pilot",
    "hypr.parquet": "hypr",
    "hypr.jsonl": "hypr",
    "open_asr.jsonl": "open-asr",
    "coedit.jsonl": "coedit",
    "pleias.jsonl": "pleias",
    "pleias.csv": "pleias",
    "pleias.parquet": "pleias",
    "translation.jsonl": "translation",
}


def test_every_format_has_a_sample_and_every_sample_is_detected(samples):
    assert set(SAMPLE_FORMATS.values()) == set(FORMATS)
    assert {p.name for p in samples.iterdir() if p.suffix != ".md"} == set(SAMPLE_FORMATS)
    for name, fmt in SAMPLE_FORMATS.items():
        assert detect_format(samples / name) == fmt, name


def test_detection_does_not_depend_on_the_extension_for_json(samples, tmp_path):
    p = tmp_path / "data.txt"
    p.write_bytes((samples / "open_asr.jsonl").read_bytes())
    assert detect_format(p) == "open-asr"
    arr = tmp_path / "data.jsonl"  # a JSON array with a .jsonl name still reads as an array
    arr.write_bytes((samples / "hyporadise.json").read_bytes())
    ex, rep = read_any(arr)
    assert rep.format == "hyporadise" and len(ex) == 5


def test_detection_votes_over_first_records_skipping_junk(tmp_path):
    p = tmp_path / "mixed.jsonl"
    rows = ["not json", json.dumps({"x": 1})] + [json.dumps({"text": "a", "corrected_text": "b"})] * 3
    p.write_text("\n".join(rows) + "\n")
    assert detect_format(p) == "pleias"


def test_format_override_beats_detection(samples):
    # a neko file read as HyPoradise: the sniffing would say neko, the user says otherwise
    ex, rep = read_any(samples / "neko.jsonl", format="hyporadise", skip_invalid=True)
    assert rep.format == "hyporadise"
    assert rep.rows == 3 and rep.skipped == 3  # N-best rows fit; text rows have no list input
    assert rep.reasons == {"wrong-type": 3}


def test_undetectable_file_lists_keys_and_formats(tmp_path):
    p = tmp_path / "weird.jsonl"
    p.write_text(json.dumps({"foo": 1, "bar": 2}) + "\n")
    with pytest.raises(
        FormatError, match=r"could not detect the format \(keys seen: bar, foo\); pass --format"
    ):
        detect_format(p)
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(FormatError, match="no readable record"):
        read_any(empty)


def test_unknown_format_did_you_mean():
    with pytest.raises(FormatError, match="Did you mean 'open-asr'"):
        get_reader("openasr")
    with pytest.raises(FormatError, match="Known formats: neko, hyporadise"):
        get_reader("zzz")


def test_unknown_forced_task_did_you_mean(samples):
    with pytest.raises(ValueError, match="--task: unknown task 'asrr'. Did you mean 'asr'"):
        read_any(samples / "hyporadise.json", task="asrr")


def test_report_counts_and_summary(tmp_path):
    p = tmp_path / "r.jsonl"
    lines = [
        json.dumps({"task": "asr", "input": ["a"], "output": "a"}),
        "{broken",
        json.dumps({"task": "ocr", "input": "x"}),
        json.dumps({"task": "asr", "input": []}),
        json.dumps({"task": "nope", "input": "x"}),
    ]
    p.write_text("\n".join(lines) + "\n")
    ex, rep = read_any(p, skip_invalid=True)
    assert len(ex) == rep.rows == 2 and rep.skipped == 3
    assert rep.tasks == {"asr": 1, "ocr": 1}
    assert rep.reasons == {"malformed-json": 1, "empty-nbest": 1, "unknown-task": 1}
    s = rep.summary()
    assert "2 rows [asr: 1, ocr: 1]" in s and "skipped 3 invalid rows" in s
    d = rep.to_dict()
    assert d["skipped_by_reason"]["malformed-json"] == 1 and len(d["first_errors"]) == 3
    assert d["first_errors"][0].startswith(f"{p}:2: malformed JSON")


def test_neko_rows_of_user_tasks_need_the_registry(tmp_path):
    from neko.tasks import load_task_config

    p = tmp_path / "u.jsonl"
    p.write_text(json.dumps({"task": "legal", "input": "x"}) + "\n")
    with pytest.raises(Exception, match="unknown task 'legal'"):
        read_any(p)
    cfg = tmp_path / "t.json"
    cfg.write_text(json.dumps([{"name": "legal", "template": "Fix:\n'{text}'"}]))
    ex, _ = read_any(p, registry=load_task_config(cfg))
    assert ex[0].task == "legal"
