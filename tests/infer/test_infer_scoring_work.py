"""Scoring does only the work a decision uses: a score weighted 0 is not computed, the head projects
only the positions a candidate score reads, and the decisions are the same as with every score."""

from __future__ import annotations

import functools
import shutil

import pytest
import torch
from infer_helpers import sample_rows

import neko.infer.rescore as rescore
from neko.infer.correct import Corrector
from neko.infer.guard import GuardConfig
from neko.infer.options import CorrectionOptions
from neko.infer.policy import Policy, RescoreConfig, TaskPolicy, save_policy
from neko.model.head import logits_at


def _corrector(tmp_path, model_dir, policy: TaskPolicy) -> Corrector:
    model = tmp_path / "m"
    shutil.copytree(model_dir, model)
    save_policy(model, Policy({"asr": policy, "ocr": policy}))
    return Corrector.from_pretrained(model, CorrectionOptions(max_new_tokens=6, batch_size=4))


@pytest.mark.parametrize(
    ("mode", "weight", "cond", "lm"),
    [("rescore", 0.0, False, True), ("rescore", 1.0, True, False), ("generate", 0.0, False, True)],
)
def test_a_score_weighted_zero_is_skipped_and_decisions_stay(tmp_path, model_dir, mode, weight, cond, lm):
    guard = GuardConfig(max_edit=1.0, min_length_ratio=0.0, max_length_ratio=9.0, min_margin=-50.0)
    policy = TaskPolicy(mode, RescoreConfig(cond_weight=weight, rank_weight=0.0, margin=0.0), guard)
    c = _corrector(tmp_path, model_dir, policy)
    rows = [r for r in sample_rows(12) if r["task"] == "asr"]
    prepared = [c.prepare(r, index=i) for i, r in enumerate(rows)]
    lean = c.run(prepared)
    full = c.run(prepared, details=True)  # details ask for every score
    assert [r.text for r in lean] == [r.text for r in full]
    assert [r.rescored for r in lean] == [r.rescored for r in full]
    for r in lean:
        assert (r.scores.cond is not None, r.scores.lm is not None) == (cond, lm)
    assert all(r.scores.cond is not None and r.scores.lm is not None for r in full)
    if mode == "generate":
        assert [r.decision["features"] for r in lean] == [r.decision["features"] for r in full]


def test_candidate_scores_with_the_head_at_candidate_positions_equal_the_full_head(monkeypatch):
    from neko.model.tiny import tiny_mixtral

    model = tiny_mixtral(initializer_range=0.3).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(5, 500, (n,), generator=g).tolist() for n in (6, 11)]
    cands = [[torch.randint(5, 500, (n,), generator=g).tolist() for n in ns] for ns in ((3, 1, 7), (5, 2))]
    views = []

    def recording(m, select, enabled=True):
        ctx = logits_at(m, select, enabled=enabled)
        view = ctx.__enter__()
        views.append(view)
        return _Exit(ctx, view)

    monkeypatch.setattr(rescore, "logits_at", recording)
    lean = rescore.score_candidates(model, prompts, cands, pad_id=0, max_rows=2)
    assert views and all(v.applied for v in views)
    monkeypatch.setattr(rescore, "logits_at", functools.partial(logits_at, enabled=False))
    full = rescore.score_candidates(model, prompts, cands, pad_id=0, max_rows=2)
    for a, b in zip(lean, full, strict=True):
        for x, y in zip(a, b, strict=True):
            assert x.tokens == y.tokens and x.logprob == pytest.approx(y.logprob, abs=1e-5)


class _Exit:
    def __init__(self, ctx, view):
        self.ctx, self.view = ctx, view

    def __enter__(self):
        return self.view

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc)
