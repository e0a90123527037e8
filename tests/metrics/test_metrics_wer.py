"""Corpus WER/CER: hand-counted cases, the empty-reference policy, and equality with jiwer."""

from __future__ import annotations

import random

import jiwer
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neko.metrics.normalizers import get_normalizer
from neko.metrics.wer import corpus_wer, edit_counts, format_pct


def test_hand_counted() -> None:
    refs = ["the cat sat on the mat", "hello world"]
    hyps = ["the cat sat on mat", "hello there big world"]
    r = corpus_wer(refs, hyps, normalizer="none")
    # utt 1: one deletion; utt 2: two insertions
    assert (r.errors, r.ref_words) == (3, 8)
    assert r.wer == pytest.approx(3 / 8)
    assert r.per_utt == pytest.approx([1 / 6, 1.0])
    assert r.mean_utt_wer == pytest.approx((1 / 6 + 1.0) / 2)
    assert (r.substitutions, r.deletions, r.insertions) == (0, 1, 2)
    assert r.n == 2 and r.n_dropped_empty_ref == 0 and r.normalizer == "none"
    assert format_pct(r.wer) == "37.50"


def test_normalizer_is_applied() -> None:
    r = corpus_wer(["The colour is twenty one."], ["the color is 21"], normalizer="whisper")
    assert r.wer == 0.0 and r.cer == 0.0
    assert corpus_wer(["The colour is twenty one."], ["the color is 21"], normalizer="none").wer > 0


def test_empty_references_dropped_and_counted() -> None:
    refs = ["hello world", "", "[NOISE]", "ignore time segment in scoring", "good bye"]
    hyps = ["hello world", "spurious words", "x", "y", "good buy"]
    r = corpus_wer(refs, hyps, normalizer="whisper")
    assert r.n == 2 and r.n_dropped_empty_ref == 3
    assert r.kept == [0, 4]
    assert r.wer == pytest.approx(1 / 4)


def test_all_empty_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no reference left"):
        corpus_wer(["", " "], ["a", "b"])


def test_length_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="pair up"):
        corpus_wer(["a"], ["a", "b"])


def test_empty_hypothesis_is_all_deletions() -> None:
    r = corpus_wer(["one two three"], [""], normalizer="none")
    assert (r.wer, r.deletions) == (1.0, 3)


def test_edit_counts() -> None:
    assert edit_counts(["a", "b", "c"], ["a", "x", "c", "d"]) == (1, 0, 1)


def _random_corpus(seed: int, n: int = 300) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    vocab = "the a cat dog sat on mat colour color twenty one 21 can't won't hello world i am".split()
    refs, hyps = [], []
    for _ in range(n):
        ref = [rng.choice(vocab) for _ in range(rng.randint(1, 15))]
        hyp = []
        for w in ref:
            u = rng.random()
            if u < 0.08:
                continue
            hyp.append(rng.choice(vocab) if u < 0.2 else w)
            if rng.random() < 0.05:
                hyp.append(rng.choice(vocab))
        refs.append(" ".join(ref).capitalize() + rng.choice([".", "!", ""]))
        hyps.append(" ".join(hyp))
    return refs, hyps


@pytest.mark.parametrize("normalizer", ["whisper", "basic", "none"])
def test_equals_jiwer_on_normalized_text(normalizer: str) -> None:
    refs, hyps = _random_corpus(seed=len(normalizer))
    norm = get_normalizer(normalizer)
    nr = [" ".join(norm(r).split()) for r in refs]
    nh = [" ".join(norm(h).split()) for h in hyps]
    keep = [i for i, r in enumerate(nr) if r]
    nr, nh = [nr[i] for i in keep], [nh[i] for i in keep]
    ours = corpus_wer(refs, hyps, normalizer=normalizer)
    out = jiwer.process_words(nr, nh)
    assert ours.wer == pytest.approx(out.wer, abs=1e-12)
    assert (
        ours.substitutions + ours.deletions + ours.insertions
        == out.substitutions + out.deletions + out.insertions
    )
    assert ours.cer == pytest.approx(jiwer.cer(nr, nh), abs=1e-12)
    per = [jiwer.wer(r, h) for r, h in zip(nr, nh, strict=True)]
    assert ours.per_utt == pytest.approx(per)


_WORDS = st.lists(st.sampled_from(["a", "b", "c", "dd", "e"]), max_size=8)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_WORDS.filter(bool), _WORDS), min_size=1, max_size=6))
def test_property_equals_jiwer(pairs: list[tuple[list[str], list[str]]]) -> None:
    refs = [" ".join(r) for r, _ in pairs]
    hyps = [" ".join(h) for _, h in pairs]
    ours = corpus_wer(refs, hyps, normalizer="none")
    out = jiwer.process_words(refs, hyps)
    assert ours.wer == pytest.approx(out.wer, abs=1e-12)
    assert ours.errors == out.substitutions + out.deletions + out.insertions
    assert ours.cer == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)
    assert 0.0 <= ours.wer and (ours.wer == 0.0) == (refs == hyps)
