"""dataset_stats: stable keys, the numbers the metrics give, None where a number does not apply."""

from __future__ import annotations

import pytest
import sacrebleu

from neko.eval.stats import dataset_stats
from neko.metrics.oracles import compositional_oracle, nbest_oracle_wer
from neko.metrics.wer import corpus_wer
from neko.schema import Example

TASK_KEYS = {
    "rows",
    "metric",
    "with_reference",
    "nbest_size",
    "one_best",
    "oracle_nbest",
    "oracle_compositional",
}

EXAMPLES = [
    Example("a1", "asr", ["i red the book", "i read the book"], "I read the book."),
    Example("a2", "asr", ["hello world", "hello word", "yellow world", "hello"], "Hello, world!"),
    Example("a3", "asr", ["no reference here"], None),
    Example("o1", "ocr", "Tbe fox", "The fox"),
    Example(
        "m1", "mt", ["the house is large", "the house is big"], "The house is big.", "English", "English"
    ),
    Example("m2", "mt", ["a cat sat", "the cat sat down"], "The cat sat down.", "English", "English"),
]


def test_keys_and_values() -> None:
    s = dataset_stats(EXAMPLES)
    assert set(s) == {"scoring", "normalizer", "bleu_tokenize", "rows", "tasks"}
    assert (
        s["scoring"] == "corpus"
        and s["normalizer"] == "whisper"
        and s["rows"] == 6
        and list(s["tasks"]) == ["asr", "mt", "ocr"]
    )
    for t in s["tasks"].values():
        assert set(t) == TASK_KEYS
    asr = s["tasks"]["asr"]
    assert (asr["rows"], asr["with_reference"], asr["metric"]) == (3, 2, "wer")
    assert asr["nbest_size"] == {"min": 1, "mean": pytest.approx(7 / 3), "max": 4}
    refs = ["I read the book.", "Hello, world!"]
    nb = [EXAMPLES[0].input, EXAMPLES[1].input]
    assert asr["one_best"]["wer"] == pytest.approx(corpus_wer(refs, [h[0] for h in nb]).wer)
    assert asr["oracle_nbest"]["wer"] == pytest.approx(nbest_oracle_wer(refs, nb).wer) == 0.0
    assert asr["oracle_compositional"]["wer"] == pytest.approx(compositional_oracle(refs, nb).wer)
    mt = s["tasks"]["mt"]
    assert mt["metric"] == "bleu"
    expected = sacrebleu.corpus_bleu(
        ["the house is large", "a cat sat"], [["The house is big.", "The cat sat down."]]
    )
    assert mt["one_best"]["bleu"] == pytest.approx(expected.score)
    assert mt["oracle_nbest"]["bleu"] >= mt["one_best"]["bleu"]
    ocr = s["tasks"]["ocr"]
    assert ocr["nbest_size"] is None and ocr["oracle_nbest"] is None and ocr["oracle_compositional"] is None
    assert ocr["one_best"]["wer"] == pytest.approx(0.5)


def test_no_references_and_dicts() -> None:
    s = dataset_stats([{"id": "x", "task": "asr", "input": ["a b"]}], normalizer="basic")
    t = s["tasks"]["asr"]
    assert s["normalizer"] == "basic" and t["with_reference"] == 0
    assert t["one_best"] is None and t["oracle_nbest"] is None and t["oracle_compositional"] is None


def test_all_empty_references_give_none() -> None:
    s = dataset_stats([Example("x", "asr", ["a"], "[NOISE]")])
    assert s["tasks"]["asr"]["one_best"] is None and s["tasks"]["asr"]["oracle_compositional"] is None


def test_hyporadise_scoring_reads_text_as_written() -> None:
    exs = [Example("u1", "asr", ["Hello there"], "hello there"), Example("u2", "asr", ["a b c d"], "a b c d")]
    s = dataset_stats(exs, scoring="hyporadise")
    assert s["scoring"] == "hyporadise" and s["normalizer"] == "none"
    assert s["tasks"]["asr"]["one_best"]["mean_utt_wer"] == pytest.approx(0.25)  # (1/2 + 0) / 2
    assert dataset_stats(exs)["tasks"]["asr"]["one_best"]["wer"] == 0.0  # whisper lower-cases
    with pytest.raises(ValueError, match="normalizer 'none', not 'basic'"):
        dataset_stats(exs, scoring="hyporadise", normalizer="basic")
