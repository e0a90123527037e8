"""Bootstrap CIs and paired comparisons: exact resampling, seeding, sanity of intervals; harm rate."""

from __future__ import annotations

import random

import numpy as np
import pytest
import sacrebleu

from neko.metrics.bleu import corpus_bleu
from neko.metrics.bootstrap import (
    bleu_ci,
    compare_to_baseline,
    paired_bleu,
    paired_wer,
    wer_ci,
)
from neko.metrics.wer import corpus_wer


def _corpus(seed: int, n: int, err: float) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(50)]
    refs, hyps = [], []
    for _ in range(n):
        ref = [rng.choice(vocab) for _ in range(rng.randint(3, 12))]
        refs.append(" ".join(ref))
        hyps.append(" ".join(w if rng.random() > err else rng.choice(vocab) for w in ref))
    return refs, hyps


def test_wer_ci_matches_naive_resampling() -> None:
    refs, hyps = _corpus(0, 60, 0.2)
    res = corpus_wer(refs, hyps, normalizer="none")
    ci = wer_ci(res, n_boot=200, seed=7, level=0.9)
    rng = np.random.default_rng(7)
    idx = rng.integers(0, res.n, size=(200, res.n))
    err, n = np.array(res.utt_errors), np.array(res.utt_ref_words)
    naive = err[idx].sum(axis=1) / n[idx].sum(axis=1)
    lo, hi = np.quantile(naive, [0.05, 0.95])
    assert (ci.low, ci.high) == pytest.approx((lo, hi))
    assert ci.estimate == pytest.approx(res.wer)
    assert ci.low <= res.wer <= ci.high


def test_seeded_and_deterministic() -> None:
    refs, hyps = _corpus(1, 80, 0.2)
    res = corpus_wer(refs, hyps, normalizer="none")
    assert wer_ci(res, n_boot=100, seed=3) == wer_ci(res, n_boot=100, seed=3)
    assert wer_ci(res, n_boot=100, seed=3) != wer_ci(res, n_boot=100, seed=4)


def test_paired_wer_detects_a_real_difference() -> None:
    refs, worse = _corpus(2, 300, 0.3)
    better = [
        " ".join(
            w if random.Random(i).random() > 0.3 else r for w, r in zip(h.split(), ref.split(), strict=True)
        )
        for i, (h, ref) in enumerate(zip(worse, refs, strict=True))
    ]
    a, b = corpus_wer(refs, better, "none"), corpus_wer(refs, worse, "none")
    d = paired_wer(a, b, n_boot=500)
    assert d.delta == pytest.approx(a.wer - b.wer) and d.delta < 0
    assert d.high < 0 and d.p_value < 0.01
    same = paired_wer(b, b, n_boot=100)
    assert (same.delta, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_wer_refuses_different_utterances() -> None:
    a = corpus_wer(["a b", "", "c"], ["a", "x", "c"], "none")
    b = corpus_wer(["a b", "d", "c"], ["a", "x", "c"], "none")
    with pytest.raises(ValueError, match="different utterances"):
        paired_wer(a, b)


def test_bleu_ci_and_paired() -> None:
    refs, hyps = _corpus(3, 100, 0.3)
    res = corpus_bleu(refs, hyps)
    ci = bleu_ci(res, n_boot=100)
    assert ci.estimate == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert ci.low <= ci.estimate <= ci.high
    perfect = corpus_bleu(refs, refs)
    d = paired_bleu(perfect, res, n_boot=100)
    assert d.delta > 0 and d.low > 0


def test_compare_to_baseline() -> None:
    h = compare_to_baseline([0.0, 0.5, 0.2, 0.3], [0.1, 0.2, 0.2, 0.3])
    assert (h.wins, h.losses, h.ties, h.n) == (1, 1, 2, 4)
    assert h.harm_rate == 0.25 and h.win_rate == 0.25
    hb = compare_to_baseline([50.0, 10.0], [40.0, 20.0], higher_is_better=True)
    assert (hb.wins, hb.losses) == (1, 1)
    with pytest.raises(ValueError):
        compare_to_baseline([0.1], [0.1, 0.2])


def test_bad_level() -> None:
    res = corpus_wer(["a b"], ["a"], "none")
    with pytest.raises(ValueError, match="level"):
        wer_ci(res, level=95)


def test_bootstrap_systems_equals_separate_calls() -> None:
    from neko.metrics.bootstrap import bootstrap_systems, wer_from_sums, wer_stats

    refs, h1 = _corpus(5, 120, 0.2)
    _, h2 = _corpus(6, 120, 0.3)
    a, b = corpus_wer(refs, h1, "none"), corpus_wer(refs, h2, "none")
    cis, paired = bootstrap_systems(
        {"a": wer_stats(a), "base": wer_stats(b)}, wer_from_sums, baseline="base", n_boot=150, seed=2
    )
    assert cis["a"] == wer_ci(a, n_boot=150, seed=2)
    assert cis["base"] == wer_ci(b, n_boot=150, seed=2)
    assert paired["a"] == paired_wer(a, b, n_boot=150, seed=2)
    assert set(paired) == {"a"}
