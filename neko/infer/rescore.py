"""Score candidate outputs under a causal LM: ``log P(candidate + EOS | prompt)``, batched, prompt once.

This is what N-best rescoring, the guard's fallback and conservative correction all rest on: given a
prompt (the task prompt a corrector was trained on, or just BOS for plain LM rescoring) and a few
candidate answers (the N-best hypotheses, the generated correction, the uncorrected input), how
likely does the model find each one?

Design choices:
- **The prompt is computed once per item.** Items are left-padded and run through the model with
  the KV cache on; the cache rows are then repeated once per candidate and only the candidate tokens
  run. For an ASR 5-best prompt of ~110 tokens and candidates of ~15, that is ~185 token positions
  instead of 5 x 125 = 625 for scoring each (prompt + candidate) on its own; both give the same
  numbers (tested).
- Position ids are explicit (count of real tokens so far), so left padding of the prompt and right
  padding of the candidates never shift a real token's position.
- Candidates that are token-identical share one score computation; an empty candidate is scored as
  the EOS alone (the model's wish to stop right away).
- Results are summed log-probabilities with their token counts; length normalisation and priors are
  the caller's choice (:mod:`neko.infer.policy` tunes them on dev).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

__all__ = ["CandidateScore", "PromptState", "prompt_state", "score_candidates"]


@dataclass(frozen=True)
class CandidateScore:
    """Summed log-probability of a candidate's tokens (EOS included) and how many tokens that is."""

    logprob: float
    tokens: int

    def normalized(self, alpha: float) -> float:
        """``logprob / tokens**alpha``: 0 = sum (favours short), 1 = per-token mean."""
        return self.logprob / (max(self.tokens, 1) ** alpha)


@dataclass
class PromptState:
    """The model's state after reading a batch of left-padded prompts: the next-token log-probs
    (B, V), the KV cache of the prompts (B rows, T0 positions) and their attention mask (B, T0).
    Greedy generation has this state after its first step, so rescoring after generating reuses it
    instead of reading every prompt a second time."""

    first_logprobs: torch.Tensor
    cache: object
    mask: torch.Tensor


def _cache_kw(model: torch.nn.Module) -> str:
    """transformers >= 5.2x names the cache argument ``cache``; earlier 5.x ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def prompt_state(model: torch.nn.Module, prompts: Sequence[Sequence[int]], pad_id: int) -> PromptState:
    """Run left-padded prompts once."""

    device = model.device
    t0 = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), t0), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), t0), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, t0 - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[b, t0 - len(p) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)  # filled in place by the forward
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=pos.to(device),
        use_cache=True,
        **{_cache_kw(model): cache},
    )
    first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
    return PromptState(first, cache, mask)


def _select_cache(model: torch.nn.Module, cache, rows: torch.Tensor):
    """A new cache holding the prompt cache's rows ``rows`` (repeats allowed), so chunks don't interfere."""

    data = [(layer.keys[rows], layer.values[rows]) for layer in cache.layers]
    return DynamicCache(ddp_cache_data=data, config=model.config)


def score_candidates(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[Sequence[int]]],
    *,
    pad_id: int,
    max_rows: int = 64,
    state: PromptState | None = None,
) -> list[list[CandidateScore]]:
    """``log P(candidate | prompt)`` for every candidate of every item, in one batch of prompts.

    prompts[b]: token ids of item b's prompt (non-empty). candidates[b][c]: token ids of candidate c
    of item b, which the caller ends with an EOS id when the stop decision should count. max_rows:
    candidate rows per forward (memory bound: rows x candidate length x vocabulary floats).
    state: the prompts' :class:`PromptState` when the caller already has it (it must come from
    exactly these prompts, left-padded); otherwise the prompts are run here.
    """
    if len(prompts) != len(candidates):
        raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (use the BOS/EOS id for plain LM scoring)")
    out: list[list[CandidateScore | None]] = [[None] * len(c) for c in candidates]
    # One row per distinct (item, token sequence); duplicates read the same score.
    rows: list[tuple[int, tuple[int, ...]]] = []
    where: dict[tuple[int, tuple[int, ...]], int] = {}
    for b, cands in enumerate(candidates):
        for c in cands:
            key = (b, tuple(c))
            if key not in where:
                where[key] = len(rows)
                rows.append(key)
    scores: list[CandidateScore] = [CandidateScore(0.0, 0)] * len(rows)
    with torch.inference_mode():
        st = state if state is not None else prompt_state(model, prompts, pad_id)
        first, cache, mask = st.first_logprobs, st.cache, st.mask
        n_real = mask.sum(1)
        device = model.device
        for start in range(0, len(rows), max_rows):
            chunk = rows[start : start + max_rows]
            nonempty = [(i, b, c) for i, (b, c) in enumerate(chunk, start) if c]
            for i, (_b, c) in enumerate(chunk, start):
                if not c:
                    scores[i] = CandidateScore(0.0, 0)
            if not nonempty:
                continue
            items = torch.tensor([b for _, b, _ in nonempty], dtype=torch.long)
            length = max(len(c) for _, _, c in nonempty)
            ids = torch.full((len(nonempty), length), pad_id, dtype=torch.long)
            cmask = torch.zeros((len(nonempty), length), dtype=torch.long)
            for r, (_, _, c) in enumerate(nonempty):
                ids[r, : len(c)] = torch.tensor(c, dtype=torch.long)
                cmask[r, : len(c)] = 1
            pos = n_real[items, None] + torch.arange(length)[None, :]
            logits = model(
                input_ids=ids.to(device),
                attention_mask=torch.cat([mask[items], cmask], dim=1).to(device),
                position_ids=pos.to(device),
                use_cache=True,
                **{_cache_kw(model): _select_cache(model, cache, items.to(device))},
            ).logits
            # token 0 is predicted by the prompt's last position, token j by candidate position j-1
            lp_first = first[items.to(first.device), ids[:, 0].to(first.device)].cpu()
            if length > 1:
                lp = torch.log_softmax(logits[:, :-1, :].float(), dim=-1)
                lp_rest = lp.gather(-1, ids[:, 1:, None].to(lp.device)).squeeze(-1).cpu() * cmask[:, 1:]
                totals = lp_first + lp_rest.sum(1)
            else:
                totals = lp_first
            for r, (i, _, c) in enumerate(nonempty):
                scores[i] = CandidateScore(float(totals[r]), len(c))
    for b, cands in enumerate(candidates):
        for k, c in enumerate(cands):
            out[b][k] = scores[where[(b, tuple(c))]]
    return out  # type: ignore[return-value]
