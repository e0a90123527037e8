from __future__ import annotations

import json
import math
import random

import pytest

from neko.infer.correct import Corrector
from neko.infer.guard import (
    GuardConfig,
    GuardSet,
    guard_features,
    load_guard,
    save_guard,
    tune_guard,
    word_edit_distance,
)
from neko.infer.options import CorrectionOptions


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
    f = guard_features(["the cat sat", "the cat sad"], "the cat sad", -0.5)
    assert f.edit_to_nearest == 0 and f.length_ratio == 1 and not f.empty
    far = guard_features(["the cat sat"], "completely unrelated words here and more", -3.0)
    cfg = GuardConfig(max_edit=0.5, min_length_ratio=0.5, max_length_ratio=1.5, min_mean_logprob=-2.0)
    reasons = cfg.reasons(far)
    assert len(reasons) == 3 and "edit distance" in reasons[0] and "length ratio" in reasons[1]
    assert cfg.reasons(f) == []
    assert GuardConfig().reasons(guard_features(["a b"], "", None)) != []  # empty output never passes


def _dev_rows(n=200, seed=0):
    """Synthetic dev predictions: fixes, harmless copies and hallucinations with low confidence."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(50)]
    rows = []
    for i in range(n):
        ref = [rng.choice(vocab) for _ in range(8)]
        hyp = list(ref)
        hyp[rng.randrange(8)] = "err"
        kind = i % 4
        if kind in (0, 1):  # the model fixes the error, confidently
            pred, lp = ref, -0.3
        elif kind == 2:  # the model copies the 1-best
            pred, lp = hyp, -0.5
        else:  # hallucination: far from every hypothesis, low confidence
            pred, lp = [rng.choice(vocab) for _ in range(14)], -2.5
        rows.append(
            {
                "id": str(i),
                "task": "asr",
                "input": [" ".join(hyp), " ".join(hyp[:-1])],
                "output": " ".join(ref),
                "prediction_unguarded": " ".join(pred),
                "details": {"mean_logprob": lp},
            }
        )
    return rows


def test_tune_reduces_wer_and_harm():
    g = tune_guard(_dev_rows(), normalizer="none")
    rep = g.report["all"]
    assert rep["wer_guarded"] < rep["wer_unguarded"] and rep["wer_guarded"] < rep["wer_one_best"]
    assert rep["harm_rate_unguarded"] == pytest.approx(0.25) and rep["harm_rate_guarded"] == 0
    assert "asr" in g.per_task  # 200 rows >= min_task_rows
    # Applying the tuned guard row by row reproduces the reported decisions.
    kept = sum(
        g.apply(r["input"], r["prediction_unguarded"], r["details"]["mean_logprob"], "asr")[1][
            "kept_one_best"
        ]
        for r in _dev_rows()
    )
    assert kept == rep["kept_one_best"] == 50


def test_harm_cap_is_respected():
    rows = _dev_rows(80)
    for r in rows[3::4]:  # make hallucinations look confident and close: only a harm cap stops them
        r["details"]["mean_logprob"] = -0.3
        r["prediction_unguarded"] = r["input"][0].replace("err", "zzz")
    free = tune_guard(rows, normalizer="none", per_task=False)
    capped = tune_guard(rows, normalizer="none", per_task=False, max_harm_rate=0.0)
    assert capped.report["all"]["harm_rate_guarded"] == 0 and capped.report["all"]["harm_constraint_met"]
    assert free.report["all"]["wer_guarded"] <= capped.report["all"]["wer_guarded"]


def test_tune_rejects_rows_without_references():
    with pytest.raises(ValueError, match="needs 'input', 'output'"):
        tune_guard([{"id": "x", "input": "a", "prediction": "a"}])


def test_save_load_roundtrip(tmp_path):
    g = GuardSet(GuardConfig(0.3, 0.5, math.inf, -math.inf), {"ocr": GuardConfig(max_edit=0.9)})
    save_guard(tmp_path, g)
    assert json.loads((tmp_path / "neko_guard.json").read_text())["default"]["max_length_ratio"] is None
    back = load_guard(tmp_path)
    assert back.default == g.default and back.per_task == g.per_task
    assert load_guard(tmp_path / "nowhere") is None
    (tmp_path / "neko_guard.json").write_text('{"default": {"bogus": 1}}')
    with pytest.raises(ValueError, match="bogus"):
        load_guard(tmp_path)


def test_corrector_applies_guard(model_dir):
    c = Corrector.from_pretrained(model_dir, CorrectionOptions(max_new_tokens=8, guard="on"))
    r = c.correct({"task": "asr", "input": ["the speech text", "the speech test"]})
    # A random model writes junk far from both hypotheses: the guard keeps the 1-best.
    assert r.unguarded != r.text and r.text == "the speech text" and r.guard["kept_one_best"]
    assert Corrector.from_pretrained(model_dir, CorrectionOptions(guard="auto")).guard is None  # none tuned


def test_guard_tune_cli(tmp_path, model_dir):
    import shutil

    from typer.testing import CliRunner

    from neko.cli import app

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in _dev_rows(60)))
    res = CliRunner().invoke(
        app, ["guard", "tune", "--model", str(model), "--dev", str(pred), "--pred", str(pred)]
    )
    assert res.exit_code == 0, res.output
    assert load_guard(model) is not None and "saved" in res.output
    # A tuned guard beside the weights is used by default ("auto") and can be switched off.
    assert Corrector.from_pretrained(model, CorrectionOptions(max_new_tokens=2)).guard is not None
    assert Corrector.from_pretrained(model, CorrectionOptions(max_new_tokens=2, guard="off")).guard is None
