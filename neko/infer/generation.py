"""Batched generation for correction: one KV-cached ``generate`` per batch, and its logits filters.

- Prompts are left-padded; greedy decoding of a batch gives the same tokens as one item at a time.
- Each row stops at its own token limit (:class:`RowLimits`); ``generate``'s ``max_new_tokens`` is
  the batch's largest.
- :class:`CopyBias` is conservative generation: a bonus on the logits of each row's input tokens,
  or at ``inf`` generation from those tokens only (plus EOS and punctuation).
- With ``keep_state`` greedy generation hands back the prompts' :class:`PromptState` (the first
  step's log-probs and the prompt's KV cache), so rescoring need not read the prompts again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from neko.infer.rescore import PromptState, left_pad
from neko.model.experts import ExpertRecorder

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["CopyBias", "RowLimits", "copy_bias", "generate"]

# Always allowed under an infinite copy bias, with and without a leading space.
PUNCTUATION = [".", ",", "?", "!", "'", '"', ":", ";", "-", "(", ")"]


class CopyBias(LogitsProcessor):
    """Adds a fixed (rows, vocabulary) offset to every step's logits (:func:`copy_bias` builds it)."""

    def __init__(self, offset: torch.Tensor) -> None:
        self.offset = offset

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores + self.offset.to(scores.dtype)  # a no-op cast for fp32 scores


class RowLimits(StoppingCriteria):
    """Stops each row of a batch at its own token limit (generate's max_new_tokens is the batch's)."""

    def __init__(self, limits: Sequence[int], prompt_len: int) -> None:
        self.limits = torch.tensor(limits)
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        # Beam search asks about batch x beams (x 2 candidates) rows, each row's kept together.
        limits = self.limits.repeat_interleave(input_ids.shape[0] // len(self.limits))
        done = (input_ids.shape[1] - self.prompt_len) >= limits
        return done.to(input_ids.device)


def copy_bias(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    hypotheses: Sequence[Sequence[str]],
    biases: Sequence[float],
    *,
    eos_ids: Sequence[int],
    num_beams: int,
) -> LogitsProcessorList | None:
    """The copy bias of a batch: row b's input tokens (``hypotheses[b]`` in their cased and spaced
    variants) get ``biases[b]`` (inf = only those, EOS and punctuation); None when no row is biased."""
    if not any(b > 0 for b in biases):
        return None
    vocab = model.get_output_embeddings().weight.shape[0]
    allowed = torch.zeros((len(hypotheses), vocab), dtype=torch.bool)
    always = list(eos_ids) + _punctuation_ids(tokenizer)
    for b, hyps in enumerate(hypotheses):
        if biases[b] == 0:
            continue
        forms: set[str] = set()
        for h in hyps:
            forms.update((h, h[:1].upper() + h[1:]))
            for w in h.split():
                cap = w[:1].upper() + w[1:]
                forms.update((w, f" {w}", cap, f" {cap}"))
        encoded = tokenizer(sorted(forms), add_special_tokens=False)["input_ids"] if forms else []
        ids = set(always).union(*encoded)
        allowed[b, [i for i in ids if i < vocab]] = True
    # Beam search expands each row into num_beams consecutive rows.
    allowed = allowed.repeat_interleave(num_beams, dim=0)
    bias = torch.tensor(list(biases), dtype=torch.float32).repeat_interleave(num_beams)
    hard = torch.isinf(bias)
    # bias * mask, with a hard row meaning "input tokens only": -inf off the mask, 0 on it.
    offset = torch.where(allowed, torch.where(hard, 0.0, bias)[:, None], 0.0)
    offset = torch.where(hard[:, None] & ~allowed, float("-inf"), offset).to(model.device)
    return LogitsProcessorList([CopyBias(offset)])


def _punctuation_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    encoded = tokenizer(PUNCTUATION + [f" {m}" for m in PUNCTUATION], add_special_tokens=False)["input_ids"]
    return [i for ids in encoded for i in ids]


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    limits: Sequence[int],
    *,
    pad_id: int,
    eos_ids: Sequence[int],
    num_beams: int,
    need_scores: bool,
    want_experts: bool,
    keep_state: bool = False,
    logits_processor: LogitsProcessorList | None = None,
) -> tuple[list[tuple[str, dict]], PromptState | None]:
    """Greedy (or beam) decode one batch of prompts (token ids), row b at most ``limits[b]`` tokens:
    (text, info) per row, and with ``keep_state`` the prompts' :class:`PromptState` recovered from
    the generation (greedy only), for rescoring. ``need_scores``: token log-probs in the info."""
    ids, mask = left_pad(prompts, pad_id)
    t0 = ids.shape[1]
    recorder = ExpertRecorder(model) if want_experts and num_beams == 1 else None
    kwargs = dict(
        input_ids=ids.to(model.device),
        attention_mask=mask.to(model.device),
        max_new_tokens=max(limits),
        stopping_criteria=StoppingCriteriaList([RowLimits(limits, t0)]) if len(set(limits)) > 1 else None,
        logits_processor=logits_processor,
        do_sample=False,
        num_beams=num_beams,
        pad_token_id=pad_id,
        eos_token_id=list(eos_ids),
        return_dict_in_generate=True,
        output_scores=need_scores,
    )
    keep_state = keep_state and num_beams == 1
    if keep_state:
        kwargs["output_logits"] = True
    with torch.inference_mode():
        if recorder is not None and recorder.active:
            with recorder.record():
                out = model.generate(**kwargs)
        else:
            out = model.generate(**kwargs)
        logprobs = None
        if need_scores:
            logprobs = (
                model.compute_transition_scores(
                    out.sequences, out.scores, getattr(out, "beam_indices", None), normalize_logits=True
                )
                .float()
                .cpu()
            )
    state = _prompt_state(out, t0, mask) if keep_state else None
    texts, infos = _decode_rows(
        tokenizer, out.sequences[:, t0:].cpu(), logprobs, prompts, limits, pad_id, eos_ids
    )
    if want_experts:
        lengths = [info["generated_tokens"] for info in infos]
        counts = recorder.counts(mask, lengths) if recorder is not None and recorder.active else None
        for b, info in enumerate(infos):
            info["experts"] = counts[b] if counts is not None else None
    return list(zip(texts, infos, strict=True)), state


def _prompt_state(out: Any, t0: int, mask: torch.Tensor) -> PromptState | None:
    """The prompts' state from a greedy generation's output (None when it kept no cache)."""
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if cache is None:
        return None
    # The cache holds the prompt and every generated token but the last; keep the prompt.
    cache.crop(t0 - cache.get_seq_length())
    return PromptState(torch.log_softmax(out.logits[0].float(), dim=-1), cache, mask)


def _decode_rows(
    tokenizer: PreTrainedTokenizerBase,
    gen: torch.Tensor,
    logprobs: torch.Tensor | None,
    prompts: Sequence[Sequence[int]],
    limits: Sequence[int],
    pad_id: int,
    eos_ids: Sequence[int],
) -> tuple[list[str], list[dict[str, Any]]]:
    """Each row's text and info from the generated tokens (the batch's, after the prompt)."""
    eos = set(eos_ids)
    texts, infos = [], []
    for b in range(gen.shape[0]):
        row = gen[b].tolist()
        # a row stopped at its own limit is padded after it, with no EOS
        n = min(next((k for k, t in enumerate(row) if t in eos), len(row)), limits[b])
        # Beam search right-pads finished hypotheses; drop pad ids that are not EOS.
        toks = [t for t in row[:n] if t != pad_id or pad_id in eos]
        texts.append(tokenizer.decode(toks, skip_special_tokens=True).strip())
        info: dict[str, Any] = {
            "prompt_tokens": len(prompts[b]),
            "generated_tokens": n,
            "max_new_tokens": limits[b],
        }
        if logprobs is not None:
            # Score the text tokens and the EOS that ended them (the decision to stop counts too).
            m = min(n + 1, len(row), logprobs.shape[1])
            lp = [round(float(x), 5) for x in logprobs[b, :m].tolist() if x != float("-inf")]
            info["token_logprobs"] = lp
            info["mean_logprob"] = round(sum(lp) / len(lp), 5) if lp else None
        infos.append(info)
    return texts, infos
