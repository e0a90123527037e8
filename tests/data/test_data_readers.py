"""Each reader maps its format into neko Examples: the shipped samples and the format's tricky cases."""

from __future__ import annotations

import json

import pytest

from neko.data.formats import read_any
from neko.data.schema import SchemaError
from neko.tasks import load_task_config


def _write(tmp_path, name, rows, *, array=False):
    p = tmp_path / name
    if array:
        p.write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
    else:
        p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return p


def test_neko_sample(samples):
    ex, rep = read_any(samples / "neko.jsonl")
    assert rep.format == "neko" and rep.skipped == 0
    assert [e.task for e in ex] == ["asr", "asr", "mt", "ocr", "tec-grammar", "tec-coherence"]
    assert ex[1].input == ['he said "no" twice', "he said no twice", "<UNK>"]  # kept as released
    assert ex[2].source_lang == "English" and ex[2].meta == {"kind": "round-trip", "pivot": "Spanish"}


def test_hyporadise_json(samples):
    ex, rep = read_any(samples / "hyporadise.json")
    assert rep.format == "hyporadise" and len(ex) == 5 and {e.task for e in ex} == {"asr"}
    assert ex[0].id == "wsj_0001" and ex[0].meta["am_score"][0] == -120.5
    assert ex[1].input[3] == ex[1].input[4]  # padding duplicates are not removed by default
    assert ex[2].input[0] == "<UNK>" and ex[2].one_best == ""  # <UNK> 1-best means "recognized nothing"
    assert ex[3].input[0] == 'he said "hello" to o\'brien' and ex[3].meta == {"score": -88.25}
    assert ex[4].id == "hyporadise-6"  # no id: <stem>-<line the element starts on>
    deduped, _ = read_any(samples / "hyporadise.json", dedup=True)
    assert deduped[1].input == [
        "it's a don't-care situation",
        "its a don't care situation",
        "it's a dont care situation",
    ]
    assert deduped[2].input == ["<UNK>", "yes"]


def test_hyporadise_json_lines_variant_and_task_override(tmp_path):
    p = _write(tmp_path, "h.jsonl", [{"input": ["a", "b"], "output": "a"}])
    ex, rep = read_any(p, format="hyporadise", task="mt")
    assert ex[0].task == "mt" and ex[0].input == ["a", "b"]


def test_hyporadise_bad_score_type(tmp_path):
    p = _write(tmp_path, "h.json", [{"input": ["a"], "output": "a", "am_score": "high"}], array=True)
    with pytest.raises(SchemaError, match=r"h\.json:2: field 'am_score': expected a number"):
        read_any(p)


def test_hyporadise_csv(samples):
    ex, rep = read_any(samples / "hyporadise.csv")
    assert rep.format == "hyporadise-csv" and len(ex) == 4
    assert ex[0].input == [
        "the cat sat on the mat",
        "the cat sat on a mat",
        "a cat sat on the mat",
        "the cat sad on the mat",
        "the cats sat on the mat",
    ]
    # best_hypo differs from the first split item: it goes to index 0, its later copy is removed
    assert ex[2].input == ["turn left then right", "turn left, then right", "turn left", "then right"]
    assert ex[3].input[0] == 'she said "stop"' and ex[3].output == "she said stop"


def test_h2t_lora(samples):
    ex, rep = read_any(samples / "h2t_lora.json")
    assert rep.format == "h2t-lora" and len(ex) == 4
    assert ex[0].input[0] == "please call stella" and len(ex[0].input) == 5
    assert ex[2].input == ["<UNK>", "from the store", "from the stores"]
    assert ex[3].id == "h2t-4" and ex[3].input == [
        "six spoons of fresh snow peas",
        "six spoons of fresh snow peace",
    ]


def test_hyporadise_pilot(samples):
    ex, rep = read_any(samples / "hyporadise_pilot.json")
    assert rep.format == "hyporadise-pilot"
    assert ex[0].meta == {"source": "chime4"} and ex[0].output == "the market closed higher"
    assert ex[2].input == ["show flights from boston to denver", ""]  # empty kept in place


def test_open_asr_sorts_by_hypothesis_index(samples):
    ex, rep = read_any(samples / "open_asr.jsonl")
    assert rep.format == "open-asr" and len(ex) == 4
    assert ex[1].input == ['The "remote" is grey.', "The remote is gray.", "The remote is great."]
    assert ex[1].output == 'The "remote" is grey.' and ex[1].meta == {
        "reference_normalized": "the remote is gray"
    }
    assert ex[3].input[2] == ""


def test_open_asr_repeated_index_and_empty_list(tmp_path):
    rows = [
        {"reference": "a", "hypotheses": [{"hypothesis_index": 0, "hypothesis": "a"}] * 2},
        {"reference": "a", "hypotheses": []},
        {"reference": "a", "hypotheses": [{"hypothesis_index": "0", "hypothesis": "a"}]},
    ]
    p = _write(tmp_path, "o.jsonl", rows)
    with pytest.raises(SchemaError, match="o.jsonl:1: field 'hypotheses': repeated hypothesis_index"):
        read_any(p, format="open-asr")
    ex, rep = read_any(p, format="open-asr", skip_invalid=True)
    assert ex == [] and rep.skipped == 3
    assert rep.reasons == {"invalid-row": 1, "empty-nbest": 1, "wrong-type": 1}
    assert "hypotheses[0].hypothesis_index" in str(rep.errors[2])


def test_coedit_maps_tasks_and_strips_instruction(samples):
    ex, rep = read_any(samples / "coedit.jsonl")
    assert rep.format == "coedit"
    assert [e.task for e in ex] == ["tec-grammar", "tec-grammar", "tec-coherence", "tec-coherence"]
    assert ex[0].input == "I has went to the store yesterday." and ex[0].id == "1"
    assert ex[1].input == 'She say: "it\'s fine".'  # only the first ": " separates the instruction
    assert ex[0].meta == {"instruction": "Fix grammaticality in this sentence", "coedit_task": "gec"}


def test_coedit_other_tasks_need_a_registered_task(tmp_path):
    rows = [
        {"_id": "1", "task": "gec", "src": "Fix grammar: a error", "tgt": "an error"},
        {"_id": "2", "task": "clarity", "src": "Make this clearer: it is what it is", "tgt": "it is fixed"},
        {"_id": "3", "task": "clarity", "src": "no instruction here", "tgt": "x"},
    ]
    p = _write(tmp_path, "c.jsonl", rows)
    with pytest.raises(
        SchemaError, match=r"c\.jsonl:2: field 'task': CoEdIT task 'clarity' has no neko task"
    ):
        read_any(p)
    ex, rep = read_any(p, skip_invalid=True)
    assert [e.id for e in ex] == ["1"] and rep.reasons == {"unknown-task": 1, "invalid-row": 1}
    cfg = tmp_path / "t.yaml"
    cfg.write_text("- name: coedit-clarity\n  template: \"Make this text clearer\\n'{text}'\"\n")
    ex, rep = read_any(p, registry=load_task_config(cfg), skip_invalid=True)
    assert [e.task for e in ex] == ["tec-grammar", "coedit-clarity"]
    forced, _ = read_any(p, task="tec-grammar", skip_invalid=True)
    assert [e.task for e in forced] == ["tec-grammar", "tec-grammar"]


@pytest.mark.parametrize("name", ["pleias.jsonl", "pleias.csv", "pleias.parquet"])
def test_pleias_all_containers(samples, name):
    ex, rep = read_any(samples / name)
    assert rep.format == "pleias" and len(ex) == 3 and {e.task for e in ex} == {"ocr"}
    assert all(e.output for e in ex) and all(isinstance(e.input, str) for e in ex)


def test_pleias_csv_multiline_field_keeps_line_numbers(samples):
    ex, _ = read_any(samples / "pleias.csv")
    assert ex[2].input == "Tlie harvest was\ngood tliis year." and ex[2].id == "csv-0003"


def test_pleias_truncation_is_off_by_default_and_cuts_both_sides(tmp_path):
    long_ocr, long_ref = "x" * 1500, "y" * 1200
    p = _write(tmp_path, "p.jsonl", [{"text": long_ocr, "corrected_text": long_ref}])
    ex, _ = read_any(p)
    assert len(ex[0].input) == 1500 and len(ex[0].output) == 1200
    ex, _ = read_any(p, truncate_chars=1000)
    assert ex[0].input == "x" * 1000 and ex[0].output == "y" * 1000


def test_pleias_over_long_text_suggests_the_cut(tmp_path):
    p = _write(tmp_path, "p.jsonl", [{"text": "z" * 100_001, "corrected_text": "z"}])
    with pytest.raises(
        SchemaError, match=r"p\.jsonl:1: field 'input': text of 100001 characters.*--truncate-chars"
    ):
        read_any(p)
    ex, _ = read_any(p, truncate_chars=1000)
    assert len(ex[0].input) == 1000


def test_translation(samples):
    ex, rep = read_any(samples / "translation.jsonl")
    assert rep.format == "translation" and [e.task for e in ex] == ["mt", "st", "mt"]
    assert (ex[0].source_lang, ex[0].target_lang) == ("Japanese", "English")
    assert (ex[1].source_lang, ex[1].target_lang) == ("English", "German")
    assert ex[0].meta["source"].startswith("彼は")
    assert ex[2].input[2] == "<UNK>" and ex[2].target_lang == "Chinese"


def test_translation_rejects_a_text_task(tmp_path):
    p = _write(
        tmp_path, "t.jsonl", [{"task": "ocr", "source_lang": "en", "target_lang": "de", "nbest": ["a"]}]
    )
    with pytest.raises(SchemaError, match="task 'ocr' takes a single text, got an N-best list"):
        read_any(p)
