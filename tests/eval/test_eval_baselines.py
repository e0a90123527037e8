"""Baselines: the 1-best is index 0; the ROVER-style vote fixes errors a majority disagrees with."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neko.eval.baselines import BASELINES, one_best, rover, rover_vote
from neko.schema import Example


def test_one_best_is_index_zero_never_the_last() -> None:
    ex = Example(id="1", task="asr", input=["first hyp", "second hyp", "last hyp"], output="x")
    assert one_best(ex) == "first hyp"
    assert one_best(["<UNK>", "b"]) == ""  # HyPoradise's placeholder for an empty hypothesis
    assert one_best("a  single   text") == "a single text"
    with pytest.raises(ValueError, match="empty N-best"):
        one_best([])


VOTE_CASES = [
    # substitution fixed: 3 of 5 say "read"
    (
        ["i red the book", "i read the book", "i read the book now", "i read a book", "i red the book ok"],
        "i read the book",
    ),
    # deletion voted: 3 of 4 distinct hypotheses drop the spurious "uh"
    (
        [
            "the cat uh sat on the mat",
            "the cat sat on the mat",
            "the cat sat on a mat",
            "a cat sat on the mat",
        ],
        "the cat sat on the mat",
    ),
    # insertion voted: a majority inserts the missing "the"
    (
        [
            "put it on table",
            "put it on the table",
            "put it on the table now",
            "but it on the table",
            "put it on table",
        ],
        "put it on the table",
    ),
    # ties go to the pivot
    (["alpha beta", "alpha gamma", "alpha delta"], "alpha beta"),
    # duplicates (HyPoradise padding) are removed before voting: 1-vs-1 is a tie -> pivot
    (["x y z", "x q z", "x q z", "x q z"], "x y z"),
    # case and edge punctuation fold for the vote; the surface form is the first met
    (["Hello world.", "hello there", "hello there!"], "Hello there"),
    # two hypotheses can never outvote the pivot
    (["a b", "a c"], "a b"),
]


@pytest.mark.parametrize("nbest,expected", VOTE_CASES)
def test_rover_vote(nbest: list[str], expected: str) -> None:
    assert rover_vote(nbest) == expected


def test_rover_on_examples_and_edge_cases() -> None:
    ex = Example(id="1", task="asr", input=VOTE_CASES[0][0], output="i read the book")
    assert rover(ex) == "i read the book"
    assert rover("just text") == "just text"
    assert rover_vote(["", "<UNK>", "  "]) == ""
    assert rover_vote(["", "a b", "a b c", "x a b c"]) == "a b c"  # empty 1-best dropped: pivot "a b"
    assert set(BASELINES) == {"1best", "rover"}


def test_rover_never_invents_words() -> None:
    nbest = ["one two three four", "one too three for", "won two tree four", "one two three floor"]
    words = {w for h in nbest for w in h.split()}
    assert set(rover_vote(nbest).split()) <= words


_HYP = st.lists(st.sampled_from(["the", "cat", "sat", "mat", "on", "a", "Cat,"]), max_size=7).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(st.lists(_HYP, min_size=1, max_size=6))
def test_property_vote_is_made_of_hypothesis_words(nbest: list[str]) -> None:
    out = rover_vote(nbest)
    words = {w for h in nbest for w in h.split()}
    assert set(out.split()) <= words
    assert rover_vote([nbest[0]] * 4) == " ".join(nbest[0].split())  # unanimous lists are left alone
