from __future__ import annotations

import math

import pytest

from neko.infer.guard import GuardConfig, guard_features, word_edit_distance


@pytest.mark.parametrize(
    "a, b, d",
    [
        ("", "", 0),
        ("a b c", "a b c", 0),
        ("a b c", "a x c", 1),
        ("a b c", "", 3),
        ("a b", "b a", 2),
        ("a", "a b c", 2),
    ],
)
def test_word_edit_distance(a, b, d):
    assert word_edit_distance(a.split(), b.split()) == d == word_edit_distance(b.split(), a.split())


def test_features_and_reasons():
    f = guard_features(["the cat sat", "the cat sad"], "the cat sad", -0.5, margin=3.0)
    assert f.edit_to_nearest == 0 and f.length_ratio == 1 and not f.empty and f.margin == 3.0
    far = guard_features(["the cat sat"], "completely unrelated words here and more", -3.0, margin=-1.0)
    cfg = GuardConfig(
        max_edit=0.5, min_length_ratio=0.5, max_length_ratio=1.5, min_mean_logprob=-2.0, min_margin=0.5
    )
    reasons = cfg.reasons(far)
    assert len(reasons) == 4 and "edit distance" in reasons[0] and "length ratio" in reasons[1]
    assert "score margin" in reasons[3]
    assert cfg.reasons(f) == []
    assert GuardConfig().reasons(guard_features(["a b"], "", None)) != []  # empty output never passes
    # an unscored correction (no margin) is not rejected for the margin
    assert GuardConfig(min_margin=1.0).reasons(guard_features(["a b"], "a b", None)) == []


def test_config_dict_roundtrip_writes_no_infinity():
    cfg = GuardConfig(0.3, 0.5, math.inf, -math.inf, 2.0)
    d = cfg.to_dict()
    assert d["max_length_ratio"] is None and d["min_mean_logprob"] is None and d["min_margin"] == 2.0
    assert GuardConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="bogus"):
        GuardConfig.from_dict({"bogus": 1})
