"""Each reader maps its format into neko Examples: the shipped samples and the format's tricky cases."""

from __future__ import annotations

import json

import pytest

from neko.data.formats import read_any
from neko.schema import SchemaError
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


def test_hyporadise_json_id_input_output_am_score(samples):
    """{id, input, output, am_score}: one JSON array on one line; scores kept per hypothesis."""
    assert len((samples / "hyporadise.json").read_text(encoding="utf-8").splitlines()) == 1
    ex, rep = read_any(samples / "hyporadise.json")
    assert rep.format == "hyporadise" and len(ex) == 5 and {e.task for e in ex} == {"asr"}
    assert [e.id for e in ex] == [f"wsj_000{i}" for i in range(1, 6)]
    assert all(len(e.input) == 5 and len(e.meta["am_score"]) == 5 for e in ex)
    assert ex[0].meta == {"am_score": [-120.5, -121.0, -122.25, -124.75, -125.0]}
    assert ex[1].input[3] == ex[1].input[4]  # padding duplicates are not removed by default
    assert ex[2].input[0] == "<unk>" and ex[2].one_best == ""  # lower-case <unk>: "recognized nothing"
    assert ex[3].input[0] == 'he said "hello" to o\'brien'
    deduped, _ = read_any(samples / "hyporadise.json", dedup=True)
    assert deduped[1].input == [
        "it's a don't-care situation",
        "its a don't care situation",
        "it's a dont care situation",
    ]
    assert deduped[1].meta["am_score"] == [-64.0, -64.5, -66.0]  # each kept hypothesis keeps its score
    assert deduped[2].input == ["<unk>", "yes"]


def test_hyporadise_json_pretty_printed_input_output_score(samples):
    """{input, output, score}, indented: no ids, so rows are numbered by array element."""
    ex, rep = read_any(samples / "hyporadise_score.json")
    assert rep.format == "hyporadise" and len(ex) == 3
    assert [e.id for e in ex] == ["hyporadise_score-1", "hyporadise_score-2", "hyporadise_score-3"]
    assert all(len(e.input) == 5 for e in ex) and ex[0].meta == {"score": [-12.5, -14.0, -14.25, -15.5, -16.0]}
    assert ex[2].input[0] == "list the <unk> flights on tuesday"  # an <unk> word inside a hypothesis stays


def test_hyporadise_json_instruction_variant(samples):
    ex, rep = read_any(samples / "hyporadise_instruction.json")
    assert rep.format == "hyporadise" and len(ex) == 3 and all(len(e.input) == 5 for e in ex)
    assert all(e.meta == {} for e in ex)  # the instruction is the same sentence on every row: not kept
    assert ex[2].one_best == "" and ex[2].output == "okay"


def test_hyporadise_json_with_h2t_fields_reads_input(samples):
    ex, rep = read_any(samples / "hyporadise_h2t.json")
    assert rep.format == "hyporadise" and len(ex) == 4
    assert ex[0].input == [
        "please call stella",
        "please call stela",
        "pleas call stella",
        "please cull stella",
        "please call stella",
    ]
    assert all(e.meta == {} for e in ex)


def test_one_line_json_array_without_ids_gets_distinct_ids(tmp_path):
    p = tmp_path / "one.json"
    p.write_text(json.dumps([{"input": ["a"], "output": "a"}, {"input": ["b"], "output": "b"}]))
    ex, _ = read_any(p)
    assert [e.id for e in ex] == ["one-1", "one-2"]


def test_hyporadise_json_lines_variant_and_task_override(tmp_path):
    p = _write(tmp_path, "h.jsonl", [{"input": ["a", "b"], "output": "a"}])
    ex, rep = read_any(p, format="hyporadise", task="mt")
    assert ex[0].task == "mt" and ex[0].input == ["a", "b"]


def test_hyporadise_bad_score_type(tmp_path):
    p = _write(tmp_path, "h.json", [{"input": ["a"], "output": "a", "am_score": "high"}], array=True)
    with pytest.raises(SchemaError, match=r"h\.json:2: field 'am_score': expected a number"):
        read_any(p)


def test_hyporadise_csv_as_released(samples):
    """source ends with ". " (each hypothesis is followed by it): 5 hypotheses, no empty sixth."""
    ex, rep = read_any(samples / "hyporadise.csv")
    assert rep.format == "hyporadise-csv" and len(ex) == 4
    assert [len(e.input) for e in ex] == [5, 5, 5, 5]
    assert ex[0].input == [
        "the cat sat on the mat",
        "the cat sat on a mat",
        "a cat sat on the mat",
        "the cat sad on the mat",
        "the cats sat on the mat",
    ]
    assert ex[2].input[0] == "<unk>" and ex[2].one_best == ""  # lower-case placeholder = empty 1-best
    # best_hypo differs from the first split item: it goes to index 0, its later copy is removed
    assert ex[3].input == ['she said "stop"', "she said stop", "she said stopped", "she sad stop", "she said stop"]
    assert ex[3].output == "she said stop" and all(e.meta == {} for e in ex)


def test_hyporadise_csv_score_column_kept_with_its_hypotheses(samples):
    ex, rep = read_any(samples / "hyporadise_score.csv")
    assert rep.format == "hyporadise-csv" and [len(e.input) for e in ex] == [5, 5, 5, 5]
    assert ex[0].meta == {"score": [-3.25, -4.5, -4.75, -6.0, -6.5]}
    # row 4's best_hypo was the second hypothesis: its score moved to the front with it
    assert ex[3].meta == {"score": [-1.5, -1.25, -3.0, -3.5, -1.25]}
    top, _ = read_any(samples / "hyporadise_score.csv", top_n=2)
    assert top[0].input == ["the cat sat on the mat", "the cat sat on a mat"]
    assert top[0].meta == {"score": [-3.25, -4.5]}


def test_hyporadise_csv_bad_score_names_line_and_field(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text('source,target,best_hypo,score\na. b. ,a,a,"[-1.0, -2.0]"\na. b. ,a,a,"[-1.0, high]"\n')
    with pytest.raises(SchemaError, match=r"s\.csv:3: field 'score': expected a list of numbers"):
        read_any(p)


@pytest.mark.parametrize(
    "source,best,expected",
    [
        ("a. b. c. ", "a", ["a", "b", "c"]),  # as released
        ("a. b. c", "a", ["a", "b", "c"]),  # no trailing separator: nothing to drop
        ("a. . c. ", "a", ["a", "", "c"]),  # an empty hypothesis in the middle stays in place
        ("x. a. ", "a", ["a", "x"]),  # best_hypo moves to the front
        ("x. y. ", "a", ["a", "x", "y"]),  # best_hypo found nowhere: prepended
    ],
)
def test_hyporadise_csv_split(source, best, expected):
    from neko.data.readers.hyporadise_csv import split_source

    assert split_source(source, best)[0] == expected


def test_h2t_lora_as_released(samples):
    """input1 = 1-best + ".", input2 = one string of hypotheses 2..5 each followed by ". "."""
    raw = json.loads((samples / "h2t_lora.json").read_text(encoding="utf-8"))
    assert raw[0]["input1"].endswith(".") and raw[0]["input2"].endswith(". ")
    ex, rep = read_any(samples / "h2t_lora.json")
    assert rep.format == "h2t-lora" and len(ex) == 4
    assert ex[0].input == [
        "please call stella",
        "please call stela",
        "pleas call stella",
        "please cull stella",
        "please call stella",
    ]
    assert ex[2].input[0] == "<unk>" and ex[2].one_best == ""
    # the same rows in the HyPoradise {input, ...} file: the split restores exactly those lists
    full, _ = read_any(samples / "hyporadise_h2t.json")
    assert [e.input for e in ex] == [e.input for e in full]


@pytest.mark.parametrize(
    "input1,input2,expected",
    [
        ("a b.", "c d. e f. ", ["a b", "c d", "e f"]),
        ("a b.", "c d. e f.", ["a b", "c d", "e f"]),  # trailing space trimmed by some tool
        ("a b", ["c d.", "e f"], ["a b", "c d.", "e f"]),  # a list is taken item by item, unchanged
        ("a b.", "", ["a b"]),  # a 1-best list
    ],
)
def test_h2t_lora_strips_only_what_the_layout_added(tmp_path, input1, input2, expected):
    p = _write(tmp_path, "h.json", [{"input1": input1, "input2": input2, "output": "x"}], array=True)
    ex, _ = read_any(p)
    assert ex[0].input == expected


def test_hyporadise_pilot_json(samples):
    ex, rep = read_any(samples / "hyporadise_pilot.json")
    assert rep.format == "hyporadise-pilot"
    assert ex[0].meta == {"source": "chime4"} and ex[0].output == "the market closed higher"
    assert ex[2].input == ["show flights from boston to denver", ""]  # empty kept in place


def test_hyporadise_pilot_parquet_as_released(samples):
    """GenSEC Task 1 is released as Parquet: read row by row; derived prompt columns dropped."""
    import pyarrow.parquet as pq

    columns = set(pq.read_schema(samples / "hyporadise_pilot.parquet").names)
    assert columns == {"hypothesis", "transcription", "input1", "hypothesis_concatenated", "source", "id", "prompt"}
    ex, rep = read_any(samples / "hyporadise_pilot.parquet")
    assert rep.format == "hyporadise-pilot" and [e.id for e in ex] == ["pilot-1", "pilot-2", "pilot-3"]
    assert all(len(e.input) == 5 for e in ex) and ex[2].input[1] == ""
    assert [e.meta for e in ex] == [{"source": "chime4"}, {"source": "cv-accent"}, {"source": "atis"}]


def test_hypr_parquet_with_lm_scores(samples):
    ex, rep = read_any(samples / "hypr.parquet")
    assert rep.format == "hypr" and [e.id for e in ex] == ["1089-134686-0001", "1089-134686-0002"]
    assert [len(e.input) for e in ex] == [8, 6]
    assert set(ex[0].meta) == {"att_score", "ctc_score", "lm_score", "score"}
    assert all(len(v) == 8 for v in ex[0].meta.values())
    assert ex[1].input[0] == "stuff it into you his belly counseled him"  # rank order kept


def test_hypr_jsonl_without_lm_and_top_n(samples):
    ex, rep = read_any(samples / "hypr.jsonl")
    assert rep.format == "hypr" and set(ex[0].meta) == {"att_score", "ctc_score", "score"}
    top, _ = read_any(samples / "hypr.jsonl", top_n=3)
    assert [len(e.input) for e in top] == [3, 3]
    assert top[1].input == ex[1].input[:3]
    assert all(v == ex[1].meta[k][:3] for k, v in top[1].meta.items())


def test_hypr_fifty_best_top_five(tmp_path):
    hyps = [f"hypothesis number {i}" for i in range(50)]
    row = {"utt_id": "u1", "ref": "hypothesis number 0", "hyps": hyps, "att_score": [-float(i) for i in range(50)]}
    row["ctc_score"] = row["score"] = row["att_score"]
    p = _write(tmp_path, "h.jsonl", [row])
    ex, _ = read_any(p)
    assert len(ex[0].input) == 50
    ex, _ = read_any(p, top_n=5)
    assert ex[0].input == hyps[:5] and ex[0].meta["score"] == [0.0, -1.0, -2.0, -3.0, -4.0]
    with pytest.raises(ValueError, match="top_n must be a positive"):
        read_any(p, top_n=0)


def test_hypr_misaligned_scores_name_the_field(tmp_path):
    p = _write(tmp_path, "h.jsonl", [{"utt_id": "u", "ref": "a", "hyps": ["a", "b"], "att_score": [-1.0]}])
    with pytest.raises(SchemaError, match=r"h\.jsonl:1: field 'att_score': 1 scores for 2 hypotheses"):
        read_any(p)


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
