"""score_rows: per-task metric, 1-best floor, ROVER, oracles, harm and CIs; prediction loading errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu
from rich.console import Console

from neko.eval.predictions import load_predictions
from neko.eval.score import ScoreConfig, print_report, score_rows, write_report
from neko.metrics.wer import corpus_wer

ASR = [
    {
        "id": "a1",
        "task": "asr",
        "input": [
            "i red the book",
            "i read the book",
            "i read the book now",
            "i read a book",
            "i red a book ok",
        ],
        "output": "I read the book.",
        "prediction": "I read the book",
    },
    {
        "id": "a2",
        "task": "asr",
        "input": ["the colour is twenty one", "the color is 21", "the collar is twenty one"],
        "output": "The color is 21.",
        "prediction": "the collar is twenty one",
    },
    {"id": "a3", "task": "asr", "input": ["hello", "hallo"], "output": "[NOISE]", "prediction": "hello"},
]
OCR = [
    {
        "id": "o1",
        "task": "ocr",
        "input": "Tbe qu1ck brown fox",
        "output": "The quick brown fox",
        "prediction": "The quick brown fox",
    },
    {
        "id": "o2",
        "task": "ocr",
        "input": "jumps ovcr the dog",
        "output": "jumps over the lazy dog",
        "prediction": "jumps ovcr the dog",
    },
]
MT = [
    {
        "id": f"m{i}",
        "task": "mt",
        "input": [f"the house is large number {i}", f"the house is big number {i}", "house big"],
        "output": f"The house is big number {i}.",
        "prediction": f"The house is big number {i}.",
        "source_lang": "English",
        "target_lang": "English",
    }
    for i in range(4)
]
CFG = ScoreConfig(n_boot=200)


def test_wer_task_columns() -> None:
    rep = score_rows(ASR + OCR, CFG)
    assert rep["normalizer"]["name"] == "whisper" and rep["systems"] == ["prediction"]
    asr = rep["tasks"]["asr"]
    assert asr["metric"] == "wer" and asr["rows"] == 3 and asr["nbest"]
    assert asr["n_dropped_empty_ref"] == 1 and asr["n_scored"] == 2  # "[NOISE]" normalizes to ""
    refs = [r["output"] for r in ASR]
    assert asr["systems"]["prediction"]["wer"] == pytest.approx(
        corpus_wer(refs, [r["prediction"] for r in ASR]).wer
    )
    assert asr["systems"]["1best"]["wer"] == pytest.approx(corpus_wer(refs, [r["input"][0] for r in ASR]).wer)
    # the vote fixes "red" -> "read" in a1 (3 of 5); in a2 colour/color/collar tie 1-1-1, so the pivot stays
    assert asr["systems"]["rover"]["errors"] < asr["systems"]["1best"]["errors"]
    assert asr["oracles"]["nbest"]["wer"] == 0.0 and asr["oracles"]["compositional"]["wer"] == 0.0
    harm = asr["vs_1best"]["prediction"]["harm"]
    assert (harm["wins"], harm["losses"], harm["ties"]) == (1, 1, 0)  # a1 fixed, a2 made worse
    ci = asr["systems"]["prediction"]["ci"]
    assert ci["low"] <= asr["systems"]["prediction"]["wer"] <= ci["high"]
    ocr = rep["tasks"]["ocr"]
    assert "rover" not in ocr["systems"] and "oracles" not in ocr and not ocr["nbest"]
    assert ocr["systems"]["1best"]["wer"] == pytest.approx(
        corpus_wer([r["output"] for r in OCR], [r["input"] for r in OCR]).wer
    )
    json.dumps(rep)  # plain JSON


def test_bleu_task_equals_sacrebleu() -> None:
    rep = score_rows(MT, CFG)
    mt = rep["tasks"]["mt"]
    refs = [r["output"] for r in MT]
    assert mt["metric"] == "bleu"
    assert mt["systems"]["prediction"]["bleu"] == pytest.approx(100.0)
    one = sacrebleu.corpus_bleu([r["input"][0] for r in MT], [refs]).score
    assert mt["systems"]["1best"]["bleu"] == pytest.approx(one)
    assert "tok:13a" in mt["signature"]
    assert mt["oracles"]["nbest"]["bleu"] > one
    assert mt["vs_1best"]["prediction"]["harm"]["wins"] == 4
    assert mt["vs_1best"]["prediction"]["paired"]["delta"] == pytest.approx(100.0 - one)


def test_normalizer_choice_and_no_bootstrap() -> None:
    rep = score_rows(ASR, ScoreConfig(normalizer="none", n_boot=0, baselines=("1best",), oracles=False))
    asr = rep["tasks"]["asr"]
    assert rep["normalizer"]["name"] == "none"
    assert set(asr["systems"]) == {"prediction", "1best"} and "oracles" not in asr
    assert "ci" not in asr["systems"]["prediction"] and "paired" not in asr["vs_1best"]["prediction"]


# Per-utterance mean and corpus WER disagree here, and so do cased and normalized text:
# u2 is one word wrong only in case; u3 one word wrong in eight.
HYPO = [
    {
        "id": "u1",
        "task": "asr",
        "input": ["the cat sat"],
        "output": "the cat sat",
        "prediction": "the cat sat",
    },
    {"id": "u2", "task": "asr", "input": ["hello"], "output": "hello", "prediction": "Hello"},
    {"id": "u3", "task": "asr", "input": ["a b c d e f g h"], "output": "a b c d e f g h"},
]
HYPO[2]["prediction"] = "a b c d e f g x"


def test_hyporadise_scoring_is_the_unnormalized_per_utterance_mean() -> None:
    rep = score_rows(HYPO, ScoreConfig(scoring="hyporadise", n_boot=200))
    assert rep["scoring"]["name"] == "hyporadise" and rep["normalizer"]["name"] == "none"
    asr = rep["tasks"]["asr"]
    assert asr["headline"] == "mean_utt_wer"
    pred = asr["systems"]["prediction"]
    assert pred["mean_utt_wer"] == pytest.approx((0 + 1 + 1 / 8) / 3)  # case counts: "Hello" != "hello"
    assert pred["wer"] == pytest.approx(2 / 12)  # the corpus number is still there, second
    # the interval and the paired difference are of the headline, not of the corpus WER
    assert pred["ci"]["low"] <= pred["mean_utt_wer"] <= pred["ci"]["high"]
    assert asr["vs_1best"]["prediction"]["paired"]["delta"] == pytest.approx(0.375)
    corpus = score_rows(HYPO, ScoreConfig(n_boot=200))
    assert corpus["scoring"]["name"] == "corpus" and corpus["tasks"]["asr"]["headline"] == "wer"
    assert corpus["normalizer"]["name"] == "whisper"
    assert corpus["tasks"]["asr"]["vs_1best"]["prediction"]["paired"]["delta"] == pytest.approx(1 / 12)
    console = Console(record=True, width=200)
    print_report(rep, console)
    text = console.export_text()
    assert "utt-mean WER %" in text and "scoring: hyporadise" in text and "37.50" in text


def test_scoring_names_and_conflicts() -> None:
    with pytest.raises(ValueError, match="Did you mean 'hyporadise'"):
        ScoreConfig(scoring="hyporadice")
    with pytest.raises(ValueError, match="scoring 'hyporadise' scores text with normalizer 'none'"):
        ScoreConfig(scoring="hyporadise", normalizer="whisper")
    assert ScoreConfig(scoring="hyporadise", normalizer="none").normalizer_name == "none"
    assert ScoreConfig(normalizer="basic").normalizer_name == "basic"


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="Did you mean 'asr'"):
        score_rows([dict(ASR[0], task="asrr")], CFG)
    with pytest.raises(ValueError, match="no reference"):
        score_rows([{k: v for k, v in ASR[0].items() if k != "output"}], CFG)
    with pytest.raises(ValueError, match="prediction"):
        score_rows([{k: v for k, v in ASR[0].items() if k != "prediction"}], CFG)
    with pytest.raises(ValueError, match="unknown baseline"):
        ScoreConfig(baselines=("oracle",))
    with pytest.raises(ValueError, match="task 'asr': no reference left to score"):
        score_rows([dict(ASR[2])], CFG)  # its only reference is "[NOISE]"
    with pytest.raises(ValueError, match="clash"):
        score_rows([dict(ASR[0], predictions={"rover": "x"})], CFG)


def test_print_and_write(tmp_path: Path) -> None:
    rep = score_rows(ASR + MT, CFG)
    console = Console(record=True, width=200)
    print_report(rep, console)
    text = console.export_text()
    assert (
        "normalizer: whisper" in text and "oracle N-best" in text and "1 rows with an empty reference" in text
    )
    assert "nrefs:1|case:mixed" in text
    out = write_report(rep, tmp_path / "sub" / "report.json")
    assert json.loads(out.read_text())["tasks"]["asr"]["metric"] == "wer"


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_load_predictions_joins_by_id(tmp_path: Path) -> None:
    ref = _write(tmp_path / "ref.jsonl", [{k: v for k, v in r.items() if k != "prediction"} for r in ASR])
    p1 = _write(
        tmp_path / "p1.jsonl", [{"id": r["id"], "prediction": r["prediction"]} for r in reversed(ASR)]
    )
    p2 = _write(tmp_path / "p2.jsonl", [{"id": r["id"], "prediction": r["input"][1]} for r in ASR])
    rows = load_predictions([("sysA", p1), str(p2)], ref=ref)
    assert [r.example.id for r in rows] == ["a1", "a2", "a3"]
    assert rows[0].predictions == {"sysA": "I read the book", "p2": "i read the book"}
    rep = score_rows(rows, CFG)
    assert set(rep["tasks"]["asr"]["vs_1best"]) == {"sysA", "p2", "rover"}


def test_load_predictions_errors(tmp_path: Path) -> None:
    ref = _write(tmp_path / "ref.jsonl", [{k: v for k, v in r.items() if k != "prediction"} for r in ASR])
    short = _write(
        tmp_path / "short.jsonl", [{"id": "a1", "prediction": "x"}, {"id": "zz", "prediction": "y"}]
    )
    with pytest.raises(
        ValueError, match=r"ids do not match: 2 id\(s\) of .*ref.jsonl have no prediction.*'zz'"
    ):
        load_predictions([short], ref=ref)
    nopred = _write(tmp_path / "nopred.jsonl", [{"id": "a1", "output": "x", "task": "asr", "input": ["x"]}])
    with pytest.raises(ValueError, match=r"nopred.jsonl:1: field 'prediction'"):
        load_predictions([nopred])
    noref = _write(tmp_path / "noref.jsonl", [{"id": "a1", "task": "asr", "input": ["x"], "prediction": "x"}])
    with pytest.raises(ValueError, match="pass the references with --ref"):
        load_predictions([noref])
    dup = _write(tmp_path / "dup.jsonl", [{"id": "a1", "prediction": "x"}, {"id": "a1", "prediction": "y"}])
    with pytest.raises(ValueError, match="duplicate id 'a1'"):
        load_predictions([dup], ref=ref)
    with pytest.raises(FileNotFoundError, match="no such prediction file"):
        load_predictions([tmp_path / "missing.jsonl"])


def test_group_by_meta_key() -> None:
    rows = [dict(r, meta={"voice": v}) for r, v in zip(ASR, ["rms", "slt", "rms"], strict=True)] + OCR
    rep = score_rows(rows, ScoreConfig(n_boot=50, group_by="voice"))
    assert rep["group_by"] == "voice"
    groups = rep["tasks"]["asr"]["groups"]
    assert set(groups) == {"rms", "slt"}
    assert groups["rms"]["rows"] == 2 and groups["rms"]["n_scored"] == 1  # a3's reference is "[NOISE]"
    assert groups["slt"]["systems"]["prediction"]["wer"] == pytest.approx(
        corpus_wer([ASR[1]["output"]], [ASR[1]["prediction"]]).wer
    )
    assert set(rep["tasks"]["ocr"]["groups"]) == {"(none)"}
    console = Console(record=True, width=200)
    print_report(rep, console)
    assert "asr by voice" in console.export_text()


def test_per_utterance_scores() -> None:
    rep = score_rows(ASR + MT, ScoreConfig(n_boot=0, per_utterance=True))
    asr = rep["tasks"]["asr"]
    assert asr["ids"] == ["a1", "a2"]  # a3 dropped: empty reference
    assert asr["systems"]["1best"]["per_utt"] == pytest.approx(
        [1 / 4, 0.0]
    )  # colour/twenty one normalize away
    mt = rep["tasks"]["mt"]
    assert mt["ids"] == [r["id"] for r in MT] and mt["systems"]["prediction"]["per_utt"] == pytest.approx(
        [100.0] * 4
    )
    assert "ids" not in score_rows(ASR, ScoreConfig(n_boot=0))["tasks"]["asr"]


def test_head_to_head_pairs_are_the_difference_of_the_two_systems() -> None:
    from dataclasses import replace

    from neko.eval.predictions import ScoredRow
    from neko.schema import example_from_dict

    rows = [ScoredRow(example_from_dict(r), {"a": r["prediction"], "b": r["input"][-1]}) for r in ASR + MT]
    rep = score_rows(rows, replace(CFG, pairs=(("a", "b"), ("a", "nope"))))
    for task in ("asr", "mt"):
        t = rep["tasks"][task]
        key = "wer" if t["metric"] == "wer" else "bleu"
        pr = t["pairs"]["a vs b"]
        assert pr["delta"] == pytest.approx(t["systems"]["a"][key] - t["systems"]["b"][key])
        assert pr["low"] <= pr["delta"] <= pr["high"] and 0.0 <= pr["p_value"] <= 1.0
        assert set(t["pairs"]) == {"a vs b"}  # a pair naming an absent system is skipped, not invented


def test_group_by_several_meta_keys() -> None:
    metas = [
        {"recognizer": "whisper", "condition": "noise"},
        {"recognizer": "whisper"},
        {"condition": "noise"},
    ]
    rows = [dict(r, meta=m) for r, m in zip(ASR, metas, strict=True)]
    rep = score_rows(rows, ScoreConfig(n_boot=0, group_by="recognizer,condition"))
    groups = rep["tasks"]["asr"]["groups"]
    assert set(groups) == {"whisper / noise", "whisper / (none)", "(none) / noise"}
    assert groups["whisper / (none)"]["systems"]["prediction"]["wer"] == pytest.approx(
        corpus_wer([ASR[1]["output"]], [ASR[1]["prediction"]]).wer
    )
