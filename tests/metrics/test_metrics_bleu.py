"""BLEU: equality with sacrebleu, signature, tokenizers, clear errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import sacrebleu

from neko.metrics.bleu import bleu_from_stats, corpus_bleu, sentence_stats

REFS = [
    "The cat is on the mat.",
    "There is a cat on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "He went to the market to buy some bread and milk.",
    "完全没有问题。",
]
HYPS = [
    "The cat sat on the mat.",
    "A cat is on the mat.",
    "The quick brown fox jumped over a lazy dog.",
    "He went to market to buy bread and milk.",
    "完全没有问题",
]


@pytest.mark.parametrize("tokenize", ["13a", "zh", "intl", "char"])
def test_equals_sacrebleu(tokenize: str) -> None:
    ours = corpus_bleu(REFS, HYPS, tokenize=tokenize)
    ref = sacrebleu.corpus_bleu(HYPS, [REFS], tokenize=tokenize)
    assert ours.score == pytest.approx(ref.score, abs=1e-9)
    assert ours.bp == pytest.approx(ref.bp)
    assert f"tok:{tokenize}" in ours.signature and "nrefs:1" in ours.signature
    metric = sacrebleu.BLEU(tokenize=tokenize)
    metric.corpus_score(HYPS, [REFS])
    assert ours.signature == str(metric.get_signature())


def test_sentence_scores_equal_sacrebleu_sentence_bleu() -> None:
    ours = corpus_bleu(REFS, HYPS)
    for r, h, s in zip(REFS, HYPS, ours.per_utt, strict=True):
        assert s == pytest.approx(sacrebleu.sentence_bleu(h, [r]).score, abs=1e-9)


def test_resampled_stats_give_sacrebleu_score() -> None:
    stats = sentence_stats(REFS, HYPS)
    idx = [0, 0, 2, 3, 3]
    assert bleu_from_stats(stats[idx].sum(axis=0)) == pytest.approx(
        sacrebleu.corpus_bleu([HYPS[i] for i in idx], [[REFS[i] for i in idx]]).score
    )
    assert stats.dtype == np.int64 and stats.shape == (5, 10)


def test_perfect_and_empty() -> None:
    assert corpus_bleu(REFS, REFS).score == pytest.approx(100.0)
    assert corpus_bleu(REFS, [""] * len(REFS)).score == 0.0


def test_unknown_tokenizer_suggests() -> None:
    with pytest.raises(ValueError, match="Did you mean '13a'"):
        corpus_bleu(REFS, HYPS, tokenize="13b")


@pytest.mark.skipif(importlib.util.find_spec("MeCab") is not None, reason="MeCab installed")
def test_ja_mecab_missing_is_clear() -> None:
    with pytest.raises(ValueError, match=r"pip install 'sacrebleu\[ja\]'"):
        corpus_bleu(REFS, HYPS, tokenize="ja-mecab")


def test_length_mismatch() -> None:
    with pytest.raises(ValueError, match="pair up"):
        corpus_bleu(REFS, HYPS[:2])
