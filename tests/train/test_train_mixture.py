"""Mixture: seeded, weighted, truncation policy counted and never cutting the answer."""

from __future__ import annotations

import pytest
from train_fixtures import make_rows, write_rows

from neko.schema import example_from_dict
from neko.train.config import DataSource
from neko.train.mixture import build_mixture, tokenize_example


def test_weights_and_seeded_order(tmp_path, tok):
    f = write_rows(tmp_path / "t.jsonl", make_rows(30, seed=4))
    mix, rep = build_mixture(
        [DataSource(str(f), 1.0)], tok, max_seq_len=512, task_weights={"asr": 2.0, "ocr": 0.5}
    )
    assert rep.kept == {"asr": 10, "ocr": 10, "tec-grammar": 10}
    e0 = mix.epoch(0)
    counts = {t: sum(e.task == t for e in e0) for t in ("asr", "ocr", "tec-grammar")}
    assert counts == {"asr": 20, "ocr": 5, "tec-grammar": 10} and len(e0) == mix.epoch_size()
    assert [e.id for e in e0] == [e.id for e in mix.epoch(0)]
    assert [e.id for e in e0] != [e.id for e in mix.epoch(1)]


def test_task_filter_for_btx(tmp_path, tok):
    f = write_rows(tmp_path / "t.jsonl", make_rows(12, seed=4))
    mix, rep = build_mixture([DataSource(str(f))], tok, max_seq_len=512, tasks=["asr"])
    assert mix.tasks() == ["asr"] and rep.filtered_task == {"ocr": 4, "tec-grammar": 4}
    with pytest.raises(KeyError, match="Did you mean"):
        build_mixture([DataSource(str(f))], tok, max_seq_len=512, tasks=["asrr"])


def test_cut_nbest_keeps_the_answer_and_one_best(tok):
    ex = example_from_dict(
        {
            "id": "a",
            "task": "asr",
            "input": ["one best here"] + ["some other words"] * 6,
            "output": "the answer text",
        }
    )
    full, outcome = tokenize_example(ex, tok, max_seq_len=2048)
    assert outcome == "ok"
    limit = len(full) - 8
    cut, outcome = tokenize_example(ex, tok, max_seq_len=limit)
    assert outcome == "cut" and len(cut) <= limit
    assert tok.decode(cut.input_ids[cut.n_prompt :]) == "the answer text" + tok.eos_token
    assert "one best here" in tok.decode(cut.input_ids[: cut.n_prompt])
    dropped, outcome = tokenize_example(ex, tok, max_seq_len=limit, truncation="drop")
    assert dropped is None and outcome == "too_long"
    tiny, outcome = tokenize_example(ex, tok, max_seq_len=20)
    assert tiny is None and outcome == "too_long"


def test_invalid_rows_raise_or_are_counted(tmp_path, tok):
    f = tmp_path / "bad.jsonl"
    f.write_text(
        '{"id": "1", "task": "ocr", "input": "x y", "output": "x z"}\n{"id": 2, "task": 5}\nnot json\n'
    )
    with pytest.raises(ValueError, match="bad.jsonl"):
        build_mixture([DataSource(str(f))], tok, max_seq_len=512)
    mix, rep = build_mixture([DataSource(str(f))], tok, max_seq_len=512, skip_invalid=True)
    assert sum(rep.invalid.values()) == 2 and rep.kept == {"ocr": 1}
