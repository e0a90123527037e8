"""Clean text and split hygiene; the rule-based corruptions and real codespell typos."""

from __future__ import annotations

import random

import pytest

from neko.benchmark.corrupt import (
    GRAMMAR_RULES,
    corrupt_coherence,
    corrupt_grammar,
    corrupt_typos,
    typo_table,
)
from neko.benchmark.plan import BuildConfig, make_plan
from neko.benchmark.text import Group, clean_sentence, load_groups, norm_key, split_groups

SENTS = [
    "The children were playing in the garden when the rain began.",
    "He has a book about the history of an old city.",
    "We went to the market because we needed some bread.",
    "She doesn't know where they have gone, but she is worried.",
    "Many people believe that the world is getting better.",
]


def test_clean_sentence_rules():
    assert clean_sentence("  A dream will always triumph over reality, once it is given the chance. ")
    assert clean_sentence("Too short.") is None
    assert clean_sentence("There were 12 angry men in the room that day.") is None  # digits
    assert clean_sentence("lower case start is not a sentence here.") is None
    assert clean_sentence(" ".join(["word"] * 25) + ".") is None


def test_split_groups_never_puts_a_sentence_in_two_splits():
    dup = "This exact sentence appears in several groups of the corpus."
    groups = [
        Group(f"g{i}", [dup, f"Sentence number {'one two three'.split()[i % 3]} of group {chr(65 + i)}."])
        for i in range(30)
    ]
    pools = split_groups(groups, {"train": 0.6, "dev": 0.2, "test": 0.2}, seed=0)
    seen: dict[str, str] = {}
    for split in ("train", "dev", "test"):
        for s, _ in pools.sentences(split):
            assert seen.setdefault(norm_key(s), split) == split
    assert (
        len({split for split in ("train", "dev", "test") for s, _ in pools.sentences(split) if s == dup}) == 1
    )


def test_real_text_sources_and_plan_hygiene():
    groups = load_groups()
    assert len(groups) > 10000
    pools = split_groups(groups, {"train": 0.8, "dev": 0.08, "test": 0.12}, seed=0)
    plan = make_plan(BuildConfig(size="small"), pools)
    refs: dict[str, set[str]] = {"train": set(), "dev": set(), "test": set(), "test_zeroshot": set()}
    for j in plan:
        refs[j.split].add(norm_key(j.reference))
        if j.task in ("tec-grammar", "tec-coherence", "typo"):
            assert j.input and j.input != j.reference
    assert (
        not (refs["train"] & refs["dev"])
        and not (refs["train"] & refs["test"])
        and not (refs["dev"] & refs["test"])
    )
    assert len(refs["test_zeroshot"]) == 200 + 300  # PocketSphinx/MT rows + Whisper rows
    assert not refs["test_zeroshot"] & (refs["train"] | refs["dev"] | refs["test"])
    assert not [j for j in plan if j.task == "typo" and j.split == "train"]
    assert len({j.id for j in plan}) == len(plan)
    # the same sentence in two groups of one split may be planned twice; the runner drops the copy
    copies = len(plan) - len({(j.task, j.split, norm_key(j.reference)) for j in plan})
    assert copies < len(plan) // 100
    assert make_plan(BuildConfig(size="small"), pools)[:50] == plan[:50]  # seeded


def test_typo_rows_never_train():
    with pytest.raises(ValueError, match="unseen task"):
        BuildConfig(sizes={"typo": {"train": 5, "dev": 1, "test": 1}}, tasks=("typo",))


def test_grammar_corruptions_change_text_and_name_rules():
    rng = random.Random(0)
    kinds = set()
    made = 0
    for _ in range(20):
        for s in SENTS:
            out = corrupt_grammar(s, rng)
            if out is None:  # two edits that undo each other: no row, as the builder requires
                continue
            made += 1
            text, rules = out
            assert text != s and rules and set(rules) <= set(GRAMMAR_RULES)
            kinds.update(rules)
    assert made >= 90
    assert len(kinds) >= 5  # varied, not one trick
    assert corrupt_grammar("Xyzzy plugh frobnicate quux.", random.Random(0)) is None


def test_coherence_pairs_and_single_sentences():
    rng = random.Random(1)
    text, ref, rules = corrupt_coherence(SENTS[0], rng, SENTS[1])
    assert ref == SENTS[0] + " " + SENTS[1] and text != ref and rules
    done = [corrupt_coherence(s, rng) for s in SENTS]
    assert any(done)
    for d, s in zip(done, SENTS, strict=True):
        if d is not None:
            assert d[1] == s and d[0] != s
    assert corrupt_coherence("Xyzzy plugh frobnicate quux.", rng) is None


def test_typos_are_real_codespell_pairs():
    table = typo_table()
    assert len(table) > 5000
    rng = random.Random(2)
    for s in SENTS:
        text, pairs = corrupt_typos(s, rng)
        assert text != s and 1 <= len(pairs) <= 3
        for right, wrong in pairs:
            assert wrong.lower() in table[right.lower()]
            assert right in s and wrong in text
