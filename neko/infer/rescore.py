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
- Arithmetic goes where a score needs it: candidates run in chunks of similar length (little
  padding), the output head projects only the positions that predict a candidate token
  (:mod:`neko.model.head`), and the prompt pass projects only its last position.
- Results are summed log-probabilities with their token counts; length normalisation and priors are
  the caller's choice (:mod:`neko.infer.policy` tunes them on dev).
- A candidate is scored as training saw answers: in sentence form, then EOS (:func:`candidate_ids`).
  :func:`score_rows` fills a batch's :class:`~neko.infer.policy.RowScores` (each hypothesis and
  generated text under the task prompt and under no prompt); :func:`answer_lm_scores` scores
  candidates under the model's answer context alone (the "answer LM").
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from neko.infer.items import body_prompt
from neko.infer.policy import RowScores
from neko.model.head import logits_at

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "CandidateScore",
    "PromptState",
    "answer_lm_scores",
    "answer_prompt_ids",
    "candidate_ids",
    "left_pad",
    "prompt_state",
    "score_candidates",
    "score_rows",
    "sentence_form",
]


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

    def rows(self, model: torch.nn.Module, index: Sequence[int]) -> PromptState:
        """The state of the prompts ``index`` only (all of them: this state itself)."""
        if list(index) == list(range(self.mask.shape[0])):
            return self
        idx = torch.tensor(list(index), dtype=torch.long)
        first = self.first_logprobs[idx.to(self.first_logprobs.device)]
        return PromptState(first, _select_cache(model, self.cache, idx.to(model.device)), self.mask[idx])


def _cache_kw(model: torch.nn.Module) -> str:
    """transformers >= 5.2x names the cache argument ``cache``; earlier 5.x ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both (B, longest prompt), with each prompt at the right end of its row."""
    t0 = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), t0), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), t0), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, t0 - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[b, t0 - len(p) :] = 1
    return ids, mask


def _last_logits_kw(model: torch.nn.Module) -> dict[str, int]:
    """``logits_to_keep=1`` where the model takes it (as ``generate`` passes it): the head then
    projects only the last prompt position, the one whose logits are used, instead of all of them."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def prompt_state(model: torch.nn.Module, prompts: Sequence[Sequence[int]], pad_id: int) -> PromptState:
    """Run left-padded prompts once."""

    device = model.device
    ids, mask = left_pad(prompts, pad_id)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)  # filled in place by the forward
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=pos.to(device),
        use_cache=True,
        **{_cache_kw(model): cache},
        **_last_logits_kw(model),
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
    scores: list[CandidateScore] = [CandidateScore(0.0, 0)] * len(rows)  # empty candidates keep it
    # Chunks of similar lengths (longest first) pad little: in N-best order a chunk of ASR candidates
    # was ~40% padding.
    order = sorted((i for i, (_b, c) in enumerate(rows) if c), key=lambda i: -len(rows[i][1]))
    with torch.inference_mode():
        st = state if state is not None else prompt_state(model, prompts, pad_id)
        for start in range(0, len(order), max_rows):
            chunk = [(i, *rows[i]) for i in order[start : start + max_rows]]
            totals = _score_chunk(model, st, [b for _, b, _ in chunk], [c for _, _, c in chunk], pad_id)
            for r, (i, _, c) in enumerate(chunk):
                scores[i] = CandidateScore(float(totals[r]), len(c))
    for b, cands in enumerate(candidates):
        for k, c in enumerate(cands):
            out[b][k] = scores[where[(b, tuple(c))]]
    return out  # type: ignore[return-value]


def _score_chunk(
    model: torch.nn.Module, st: PromptState, items: list[int], cands: list[tuple[int, ...]], pad_id: int
) -> torch.Tensor:
    """Summed log-probs (R,) of R non-empty candidates, candidate r continuing prompt ``items[r]``
    of ``st``: one forward of the candidates (right-padded) on the repeated prompt cache, the head
    applied only where a candidate token follows (:func:`neko.model.head.logits_at`)."""
    device = model.device
    rows = torch.tensor(items, dtype=torch.long)
    length = max(len(c) for c in cands)
    ids = torch.full((len(cands), length), pad_id, dtype=torch.long)
    cmask = torch.zeros((len(cands), length), dtype=torch.long)
    for r, c in enumerate(cands):
        ids[r, : len(c)] = torch.tensor(c, dtype=torch.long)
        cmask[r, : len(c)] = 1
    pos = st.mask.sum(1)[rows, None] + torch.arange(length)[None, :]
    follows = cmask[:, 1:].bool()  # (R, length - 1): candidate token j + 1 exists
    select = torch.zeros(ids.shape, dtype=torch.bool)  # the positions that predict a candidate token
    select[:, :-1] = follows
    with logits_at(model, select) as view:
        logits = model(
            input_ids=ids.to(device),
            attention_mask=torch.cat([st.mask[rows], cmask], dim=1).to(device),
            position_ids=pos.to(device),
            use_cache=True,
            **{_cache_kw(model): _select_cache(model, st.cache, rows.to(device))},
        ).logits
    # token 0 is predicted by the prompt's last position, token j by candidate position j-1
    first = st.first_logprobs
    lp_first = first[rows.to(first.device), ids[:, 0].to(first.device)].cpu()
    if length == 1:
        return lp_first
    if view.applied:  # (N, V): one row per True of select, row-major
        lp = torch.log_softmax(logits.float(), dim=-1)
        picked = lp.gather(-1, ids[:, 1:][follows][:, None].to(lp.device)).squeeze(-1).cpu()
        lp_rest = torch.zeros(follows.shape, dtype=picked.dtype).masked_scatter(follows, picked)
    else:  # a head the hook could not find: (R, length, V)
        lp = torch.log_softmax(logits[:, :-1, :].float(), dim=-1)
        lp_rest = lp.gather(-1, ids[:, 1:, None].to(lp.device)).squeeze(-1).cpu() * cmask[:, 1:]
    return lp_first + lp_rest.sum(1)


def sentence_form(text: str) -> str:
    """``"the cat sat"`` -> ``"The cat sat."``; text with any capital letter or a final ``.?!`` as is."""
    t = text.strip()
    if not t or any(ch.isupper() for ch in t) or t[-1] in ".?!":
        return text
    return t[0].upper() + t[1:] + "."


def candidate_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """A candidate answer as training saw it: the text, then EOS (stopping is part of the answer).

    A hypothesis written like ASR output (no capital letter, no final punctuation) is scored in
    sentence case with a full stop, the form of the answers the model learned: otherwise the
    model's surprise at the form drowns its judgement of the words (on ASR dev rows the answer-LM
    rescoring went from -8% to -15% relative WER with it; bench/NOTES.md)."""
    return tokenizer(sentence_form(text) + tokenizer.eos_token, add_special_tokens=False)["input_ids"]


def answer_prompt_ids(tokenizer: PreTrainedTokenizerBase, use_chat_template: bool) -> list[int]:
    """The model's answer context with an empty input: what the "answer LM" scores text under
    (the chat template's assistant turn after an empty user turn, or the plain layout's OUTPUT:).
    Any causal LM has one; for a model trained on corrections it is an LM of corrected text."""
    return tokenizer(body_prompt(tokenizer, use_chat_template, ""), add_special_tokens=False)["input_ids"]


def answer_lm_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: Sequence[int],
    candidates: Sequence[Sequence[str]],
    *,
    pad_id: int,
    batch_size: int,
) -> list[list[CandidateScore]]:
    """``log P(candidate + EOS | prompt)`` per candidate list, ``batch_size`` lists at a time, with
    one ``prompt`` for all (the answer context of :func:`answer_prompt_ids`)."""
    out: list[list[CandidateScore]] = []
    with torch.no_grad():
        for start in range(0, len(candidates), batch_size):
            chunk = candidates[start : start + batch_size]
            ids = [[candidate_ids(tokenizer, c) for c in cs] for cs in chunk]
            out += score_candidates(model, [prompt] * len(chunk), ids, pad_id=pad_id)
    return out


def score_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    rows: Sequence[RowScores],
    *,
    pad_id: int,
    bos_id: int,
    state: PromptState | None = None,
    cond: bool = True,
    lm: bool = True,
) -> None:
    """Fill ``cond`` / ``lm`` / ``ntok`` (and the generated texts') of each row in place: each
    hypothesis (and the generated texts) scored under the row's prompt (``prompts[b]``; ``state``:
    their state when the caller has it), and under no prompt at all (``bos_id`` only).
    ``cond`` / ``lm`` False skip that scoring and leave its fields as they are: the task-prompt
    pass reads every prompt, the costliest part of rescoring, and a policy weighting it 0 never uses it."""
    if not (cond or lm):
        return
    cands = [list(r.hypotheses) + [g for g in (r.generated, r.con_generated) if g is not None] for r in rows]
    ids = [[candidate_ids(tokenizer, c) for c in cs] for cs in cands]
    if cond:
        scored = score_candidates(model, prompts, ids, pad_id=pad_id, state=state)
        for r, c in zip(rows, scored, strict=True):
            _fill(r, c, "cond")
    if lm:
        scored = score_candidates(model, [[bos_id]] * len(rows), ids, pad_id=pad_id)
        for r, c in zip(rows, scored, strict=True):
            _fill(r, c, "lm")


def _fill(row: RowScores, scores: list[CandidateScore], kind: str) -> None:
    """Set ``row``'s ``kind`` ("cond" or "lm") scores: the hypotheses', then the generated texts'."""
    n = len(row.hypotheses)
    setattr(row, kind, [x.logprob for x in scores[:n]])
    row.ntok = [x.tokens for x in scores[:n]]
    for prefix, text in (("gen", row.generated), ("con", row.con_generated)):
        if text is not None:
            setattr(row, f"{prefix}_{kind}", scores[n].logprob)
            setattr(row, f"{prefix}_ntok", scores[n].tokens)
            n += 1
