"""Oracles: N-best oracle picks the best hypothesis; compositional oracle is token-exact."""

from __future__ import annotations

import pytest

from neko.metrics.oracles import (
    compositional_oracle,
    nbest_oracle_bleu,
    nbest_oracle_choice,
    nbest_oracle_wer,
)
from neko.metrics.wer import corpus_wer


def test_nbest_oracle_picks_best_with_ties_to_rank() -> None:
    refs = ["the cat sat", "a b c d"]
    nbests = [["the hat sat", "the cat sat", "the cat sat"], ["a b x d", "a y c d", "q r s t"]]
    o = nbest_oracle_wer(refs, nbests, normalizer="none")
    assert o.choice == [1, 0]  # exact match; tie between 0 and 1 -> index 0
    assert o.errors == 1 and o.ref_words == 7
    assert o.wer == pytest.approx(1 / 7)
    # never worse than the 1-best
    assert o.wer <= corpus_wer(refs, [nb[0] for nb in nbests], normalizer="none").wer


def test_nbest_oracle_drops_empty_refs() -> None:
    o = nbest_oracle_wer(["", "hello"], [["x"], ["hello", "yellow"]], normalizer="whisper")
    assert o.choice == [-1, 0] and o.n == 1 and o.n_dropped_empty_ref == 1 and o.wer == 0.0
    assert nbest_oracle_choice(["hello"], ["hello"]) == [0]  # a single string is a 1-item list


def test_compositional_oracle_is_token_exact() -> None:
    # "cat" appears only inside "cats" and "concatenate": not covered (no substring matching)
    refs = ["the cat sat on the mat"]
    nbests = [["the cats sat", "concatenate on a mat"]]
    o = compositional_oracle(refs, nbests, normalizer="none")
    assert (o.missing, o.ref_words) == (1, 6)
    assert o.wer == pytest.approx(1 / 6)


def test_compositional_oracle_uses_normalizer() -> None:
    refs = ["The colour is twenty one"]
    nbests = [["the color", "is 21"]]
    assert compositional_oracle(refs, nbests, normalizer="whisper").wer == 0.0
    assert compositional_oracle(refs, nbests, normalizer="basic").missing == 3


def test_compositional_below_nbest_oracle() -> None:
    refs = ["a b c d e f"]
    nbests = [["a b x x e f", "x x c d x x"]]
    cp = compositional_oracle(refs, nbests, normalizer="none")
    nb = nbest_oracle_wer(refs, nbests, normalizer="none")
    assert cp.wer == 0.0 and nb.wer == pytest.approx(2 / 6)


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match="pair up"):
        nbest_oracle_wer(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError, match="empty"):
        compositional_oracle(["a"], [[]])


def test_nbest_oracle_bleu() -> None:
    refs = ["the cat is on the mat", "a quick brown fox"]
    nbests = [["a dog is on a rug", "the cat is on the mat"], ["a quick brown fox", "the slow fox"]]
    res, choice = nbest_oracle_bleu(refs, nbests)
    assert choice == [1, 0] and res.score == pytest.approx(100.0)


def test_unk_placeholder_is_an_empty_hypothesis() -> None:
    o = compositional_oracle(["unk the"], [["<UNK>", "the"]], normalizer="basic")
    assert o.missing == 1  # "<UNK>" does not supply the word "unk"
    assert nbest_oracle_wer(["a"], [["<UNK>", "b"]], normalizer="basic").choice == [
        0
    ]  # both 1 error: first wins
