"""The N-best policy documented in neko.schema, pinned."""

from __future__ import annotations

import pytest

from neko.schema import Example, SchemaError, clean_nbest, example_from_dict, read_jsonl, write_jsonl


def test_one_best_is_index_zero_with_unk_as_empty():
    assert Example("a", "asr", ["second best? no: first", "x"]).one_best == "second best? no: first"
    assert Example("a", "asr", ["<UNK>", "yes"]).one_best == ""
    assert Example("a", "asr", [" <UNK> ", "yes"]).one_best == ""
    assert Example("a", "ocr", "page text").one_best == "page text"
    # released HyPoradise CSVs write the placeholder lower-cased
    assert Example("a", "asr", ["<unk>", "yes"]).one_best == ""
    assert clean_nbest(["<unk>", " <Unk> ", "yes"]) == ["yes"]
    with pytest.raises(SchemaError, match="empty N-best list"):
        example_from_dict({"task": "asr", "input": ["<unk>", ""]})


def test_clean_nbest_drops_empty_and_unk_keeps_order_dedups_first():
    hyps = ["a  b", "<UNK>", "", "c", "a b", " c "]
    assert clean_nbest(hyps) == ["a b", "c"]
    assert clean_nbest(hyps, dedup=False) == ["a b", "c", "a b", "c"]
    assert clean_nbest(hyps, drop_unk=False, dedup=False) == ["a b", "<UNK>", "c", "a b", "c"]


def test_no_padding_and_duplicates_kept_by_the_schema():
    ex = example_from_dict({"task": "asr", "input": ["a", "a", "b"]})
    assert ex.input == ["a", "a", "b"]  # short lists are not padded, duplicates are not removed


def test_roundtrip_and_default_ids(tmp_path):
    rows = [
        Example("x1", "mt", ["Hola", "'quoted'"], "Hello", "Spanish", "English", {"pivot": "es"}),
        example_from_dict({"task": "ocr", "input": "t", "id": 7}),
        example_from_dict({"task": "ocr", "input": "t"}, path="dir/file.jsonl", line=4),
    ]
    assert rows[1].id == "7" and rows[2].id == "file-4"
    p = tmp_path / "rows.jsonl"
    assert write_jsonl(rows, p) == 3
    assert read_jsonl(p) == rows
    assert not list(tmp_path.glob(".rows.jsonl.*"))  # atomic write left no temp file


def test_error_message_layout():
    with pytest.raises(SchemaError) as info:
        example_from_dict({"task": "asr", "input": [1]}, path="f.jsonl", line=9)
    e = info.value
    assert str(e) == "f.jsonl:9: field 'input[0]': expected a string, got int"
    assert (e.path, e.line, e.field, e.kind, e.reason) == (
        "f.jsonl",
        9,
        "input[0]",
        "wrong-type",
        "expected a string, got int",
    )
