"""Candidate scoring: the prompt-once batched path equals scoring each (prompt + candidate) alone."""

from __future__ import annotations

import pytest
import torch

from neko.infer.rescore import CandidateScore, score_candidates


def _naive(model, prompt: list[int], cand: list[int]) -> float:
    """Sum of log P(cand[j] | prompt + cand[:j]) from one unpadded forward of prompt + candidate."""
    ids = torch.tensor([prompt + cand])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return float(sum(lp[len(prompt) - 1 + j, t] for j, t in enumerate(cand)))


@pytest.fixture(scope="module", params=["llama", "mixtral", "qwen2_moe"])
def model(request):
    from neko.model.tiny import tiny_llama, tiny_mixtral
    from neko.model.upcycle import upcycle_model

    if request.param == "llama":
        m = tiny_llama(initializer_range=0.3)
    elif request.param == "mixtral":
        m = tiny_mixtral(initializer_range=0.3)
    else:  # partial up-cycling: the quick start's layout (dense and MoE layers mixed)
        m = upcycle_model(tiny_llama(initializer_range=0.3), num_experts=4, moe_layers=[1], noise_std=0.5)
    return m.eval()


def test_batched_prompt_once_equals_each_candidate_alone(model):
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 500, (n,), generator=g).tolist() for n in (7, 3, 12)]
    cands = [
        [torch.randint(5, 500, (n,), generator=g).tolist() for n in (4, 1, 6)],
        [torch.randint(5, 500, (n,), generator=g).tolist() for n in (2,)],
        [torch.randint(5, 500, (n,), generator=g).tolist() for n in (5, 5, 3, 9)],
    ]
    got = score_candidates(model, prompts, cands, pad_id=0, max_rows=3)  # several chunks
    for b, item in enumerate(cands):
        for c, cand in enumerate(item):
            assert got[b][c].tokens == len(cand)
            assert got[b][c].logprob == pytest.approx(_naive(model, prompts[b], cand), abs=1e-4)


def test_duplicates_share_a_score_and_empty_candidates_score_zero(model):
    prompts = [[5, 6, 7]]
    got = score_candidates(model, prompts, [[[8, 9], [], [8, 9]]], pad_id=0)[0]
    assert got[0] == got[2]
    assert got[1] == CandidateScore(0.0, 0)
    assert got[0].logprob < 0


def test_length_normalisation():
    s = CandidateScore(-8.0, 4)
    assert s.normalized(0) == -8.0
    assert s.normalized(1) == -2.0
    assert s.normalized(0.5) == pytest.approx(-4.0)


def test_bad_arguments_are_named(model):
    with pytest.raises(ValueError, match="2 prompts but 1 candidate lists"):
        score_candidates(model, [[1], [2]], [[[3]]], pad_id=0)
    with pytest.raises(ValueError, match="at least one token"):
        score_candidates(model, [[]], [[[3]]], pad_id=0)
