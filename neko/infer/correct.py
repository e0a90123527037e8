"""The Python correction API: ``Corrector.from_pretrained(dir).correct(items)``.

A batch goes prepare -> generate -> score -> decide, and this module is that orchestration; each
step's machinery lives beside it: input coercion in :mod:`neko.infer.items`, loading in
:mod:`neko.infer.loading`, generation and its logits filters in :mod:`neko.infer.generation`,
candidate scoring in :mod:`neko.infer.rescore`, the decision in :mod:`neko.infer.policy`.

Design choices:
- Two stages. :meth:`Corrector.prepare` turns one user item into a prompt (or a per-item error);
  :meth:`Corrector.run` decodes many prepared items together. The HTTP server validates in the
  request handler with ``prepare`` and lets its batching worker call ``run`` on items from many
  requests, so both paths share one decoding code path.
- Batching: prompts are sorted by token length (longest first, so an out-of-memory shows up on the
  first batch), left-padded and decoded with one KV-cached ``generate`` per batch. Greedy decoding
  of a batch gives the same tokens as one item at a time (tested); bench/bench_correct.py measures
  the speed-up.
- Errors are per item: empty, over-long or non-UTF-8 input and unknown tasks come back as
  ``CorrectionResult(error=...)`` while the rest of the batch is corrected.
- The prompt is built by ``neko.tasks.build_prompt`` with the registry and prompt style saved beside
  the weights, so inference asks exactly what training taught.
- Rows whose N-best hypotheses agree (:func:`neko.infer.policy.hypotheses_agree`) are returned as
  their 1-best without running the model (unless ``all_outputs``), when the policy keeps them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from neko.infer import generation
from neko.infer.items import (
    AM_CLIP,
    CorrectionResult,
    Item,
    PreparedItem,
    body_prompt,
    check_hypotheses,
    fewshot_examples,
    is_nbest,
    recognizer_scores,
    to_example,
)
from neko.infer.loading import eos_token_ids, load_model_dir
from neko.infer.options import CorrectionOptions, new_token_limit
from neko.infer.policy import (
    Decision,
    Policy,
    RowScores,
    TaskPolicy,
    decide,
    hypotheses_agree,
    load_policy,
    needs_scores,
    plan,
    scores_needed,
)
from neko.infer.rescore import (
    CandidateScore,
    PromptState,
    answer_lm_scores,
    answer_prompt_ids,
    score_rows,
    sentence_form,
)
from neko.model.experts import set_router_top_k
from neko.model.precision import Precision
from neko.schema import Example, clean_nbest
from neko.tasks import REGISTRY, TaskRegistry, build_prompt

__all__ = [
    "AM_CLIP",
    "Corrector",
    "CorrectionResult",
    "Item",
    "PreparedItem",
    "recognizer_scores",
    "sentence_form",
]


@dataclass(eq=False)
class _Row:
    """One item of a batch on its way through generate -> score -> decide."""

    index: int  # where its result goes in run()'s answer
    item: PreparedItem
    details: bool
    policy: TaskPolicy
    mode: str
    guard: bool
    agree: bool  # the N-best hypotheses agree and the policy keeps such rows: no model run needed
    scores: RowScores
    free: tuple[str, dict] | None = None  # the free generation: (text, info)
    constrained: tuple[str, dict] | None = None  # the N-best-constrained generation


class Corrector:
    """A loaded correction model. Build with :meth:`from_pretrained`; call :meth:`correct`."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        registry: TaskRegistry | None = None,
        use_chat_template: bool = True,
        options: CorrectionOptions | None = None,
        policy: Policy | None = None,
        model_dir: str | Path | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.registry = registry or REGISTRY.copy()
        self.use_chat_template = use_chat_template
        self.options = options or CorrectionOptions()
        self.policy = policy
        self.model_dir = Path(model_dir) if model_dir is not None else None
        if self.options.top_k_experts is not None:
            set_router_top_k(self.model, self.options.top_k_experts)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        # from_pretrained sets it from options.dtype; a model handed in computes in its own dtype
        half = {torch.bfloat16: "bf16", torch.float16: "fp16"}
        self.precision = Precision(half.get(getattr(model, "dtype", None), "fp32"), "the given model's dtype")

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, options: CorrectionOptions | None = None) -> Corrector:
        """Load a neko model directory (weights + tokenizer + neko_prompts.json [+ neko_policy.json])."""
        options = options or CorrectionOptions()
        model_dir = Path(model_dir)
        loaded = load_model_dir(model_dir, options)
        corrector = cls(
            loaded.model,
            loaded.tokenizer,
            registry=loaded.registry,
            use_chat_template=loaded.use_chat_template,
            options=options,
            policy=load_policy(model_dir),
            model_dir=model_dir,
        )
        corrector.precision = loaded.precision
        return corrector

    # ---- user API ----

    def correct(
        self,
        item_or_list: Item | Sequence[Item],
        task: str | None = None,
        fewshot: Any = None,
        details: bool = False,
    ) -> CorrectionResult | list[CorrectionResult]:
        """Correct one item or a list of items.

        One item: a str (needs ``task``), an N-best list of str (best first; needs ``task``), an
        :class:`Example` or a neko-row dict. A list whose elements are Examples, dicts, N-best lists
        or bytes is a batch and returns a list; a list of plain str is ONE N-best item (use
        :meth:`correct_batch` for many plain texts). ``task`` is the default for items without one;
        ``fewshot`` is a list of solved examples or {task: list}.
        """
        single = isinstance(item_or_list, (str, bytes, Example, Mapping)) or is_nbest(item_or_list)
        if single:
            return self.correct_batch([item_or_list], task=task, fewshot=fewshot, details=details)[0]
        return self.correct_batch(list(item_or_list), task=task, fewshot=fewshot, details=details)

    def correct_batch(
        self, items: Sequence[Item], task: str | None = None, fewshot: Any = None, details: bool = False
    ) -> list[CorrectionResult]:
        """Correct every element of ``items`` as its own item (plain strings are single texts here)."""
        prepared = [self.prepare(it, task=task, fewshot=fewshot, index=i) for i, it in enumerate(items)]
        return self.run(prepared, details=details)

    # ---- prepare: validation and prompt ----

    def prepare(
        self, item: Item, task: str | None = None, fewshot: Any = None, index: int = 0
    ) -> PreparedItem:
        """Validate one item and build its prompt; problems become ``PreparedItem.error``."""
        ident, tname, hyps = str(index), task, []
        try:
            ex = to_example(item, task, index, self.registry)
            ident, tname, hyps = ex.id, ex.task, ex.hypotheses
            check_hypotheses(hyps, self.options.max_input_chars)
            try:
                template = self.registry.get(ex.task).template
            except KeyError as e:
                raise ValueError(e.args[0]) from None
            prompt = build_prompt(
                ex,
                tokenizer=self.tokenizer,
                fewshot=fewshot_examples(fewshot, ex.task),
                registry=self.registry,
                use_chat_template=self.use_chat_template,
                # bounded before it is built: the input quoted up to 4 times, plus the instruction
                max_chars=4 * self.options.max_input_chars + len(template),
            )
        except ValueError as e:  # SchemaError is a ValueError
            return PreparedItem(ident, tname, hyps, error=str(e))
        nbest = self.registry.get(ex.task).input_kind == "nbest"
        am = recognizer_scores(ex) if nbest else None
        hyps = clean_nbest(hyps, dedup=False) if nbest else [ex.one_best if ex.is_nbest else str(ex.input)]
        return self._tokenized(PreparedItem(ident, tname, hyps, prompt=prompt, nbest=nbest, am=am))

    def prepare_body(self, body: str, id: str | None = None) -> PreparedItem:
        """A raw prompt body (instruction + input, e.g. an OpenAI-style user message) in the model's style."""
        if not body.strip():
            return PreparedItem(id, None, [], error="empty prompt: nothing to correct")
        if len(body) > self.options.max_input_chars:
            why = f"prompt of {len(body)} characters exceeds the limit of {self.options.max_input_chars}"
            return PreparedItem(id, None, [], error=why)
        prompt = body_prompt(self.tokenizer, self.use_chat_template, body)
        return self._tokenized(PreparedItem(id, None, [], prompt=prompt))

    def _tokenized(self, p: PreparedItem) -> PreparedItem:
        ids = self.tokenizer(p.prompt, add_special_tokens=False)["input_ids"]
        if p.hypotheses:
            longest = max(len(self.tokenizer(h, add_special_tokens=False)["input_ids"]) for h in p.hypotheses)
        else:  # a raw prompt body: the input is somewhere inside the prompt
            longest = len(ids)
        p.max_new_tokens = new_token_limit(self.options, longest)
        limit = self.options.max_input_tokens
        if self.max_positions:
            limit = min(limit, self.max_positions - p.max_new_tokens)
        if len(ids) > limit:
            p.error = (
                f"prompt of {len(ids)} tokens exceeds the limit of {limit} "
                f"(max_input_tokens={self.options.max_input_tokens}, model context {self.max_positions}, "
                f"{p.max_new_tokens} new tokens); shorten the input or the N-best list"
            )
        else:
            p.input_ids = ids
        return p

    # ---- run: generate -> score -> decide, one batch at a time ----

    @torch.no_grad()
    def run(
        self,
        prepared: Sequence[PreparedItem],
        details: bool | Sequence[bool] = False,
        *,
        all_outputs: bool = False,
        constrained: bool = False,
    ) -> list[CorrectionResult]:
        """Decode prepared items in length-sorted batches; results come back in input order.

        ``all_outputs``: generate and rescore every item whatever its policy says, so ``generated``
        and ``rescored`` are filled for each (what the evaluation tables compare); ``text`` is still
        the policy's choice. ``constrained``: also decode every N-best item whose hypotheses do not
        agree with the N-best-constrained generation (``constrained``; what policy tuning compares)."""
        want = list(details) if isinstance(details, Sequence) else [bool(details)] * len(prepared)
        results: list[CorrectionResult | None] = [None] * len(prepared)
        todo = [i for i, p in enumerate(prepared) if p.error is None]
        for i, p in enumerate(prepared):
            if p.error is not None:
                results[i] = CorrectionResult(None, id=p.id, task=p.task, error=p.error)
        if self.options.sort_by_length:
            todo.sort(key=lambda i: -len(prepared[i].input_ids))
        bs = self.options.batch_size
        for start in range(0, len(todo), bs):
            batch = [self._plan(i, prepared[i], want[i]) for i in todo[start : start + bs]]
            state, state_rows = self._generate_rows(batch, all_outputs, constrained)
            self._score(batch, state, state_rows, all_outputs, constrained)
            for row in batch:
                results[row.index] = self._decide(row)
        return results  # type: ignore[return-value]

    def _plan(self, index: int, p: PreparedItem, details: bool) -> _Row:
        tp, mode, guard = plan(self.policy, self.options, p.task, p.nbest, bool(p.hypotheses))
        # Hypotheses that agree: the policy returns the 1-best, the model need not run.
        agree = tp.keep_if_agree and hypotheses_agree(p.hypotheses)
        return _Row(index, p, details, tp, mode, guard, agree, RowScores(p.hypotheses, am=p.am))

    def _generate_rows(
        self, batch: list[_Row], all_outputs: bool, constrained: bool
    ) -> tuple[PromptState | None, list[_Row]]:
        """Generate what the rows' modes need: the free generation, and the N-best-constrained one.
        Returns the prompts' state kept from one of the generations, and the rows it covers."""
        free = [r for r in batch if all_outputs or (r.mode == "generate" and not r.agree)]
        con = [
            r
            for r in batch
            if r.item.hypotheses
            and not r.agree
            and (r.mode == "constrained" or (constrained and r.item.nbest))
        ]
        state, state_rows = None, []
        if free:
            decoded, state = self._generate(
                [r.item for r in free],
                need_scores=True,
                want_experts=any(r.details for r in free),
                keep_state=True,
            )
            for r, out in zip(free, decoded, strict=True):
                r.free = out
                r.scores.generated, r.scores.gen_mean_logprob = out[0], out[1].get("mean_logprob")
            state_rows = free
        if con:
            # the copy bias at inf: only the input hypotheses' tokens (and EOS, punctuation)
            decoded, cstate = self._generate(
                [r.item for r in con],
                need_scores=True,
                want_experts=any(r.details for r in con),
                keep_state=state is None,
                biases=[math.inf] * len(con),
            )
            for r, out in zip(con, decoded, strict=True):
                r.constrained = out
                r.scores.con_generated, r.scores.con_mean_logprob = out[0], out[1].get("mean_logprob")
            if state is None:
                state, state_rows = cstate, con
        return state, state_rows

    def _generate(
        self,
        items: list[PreparedItem],
        need_scores: bool,
        want_experts: bool,
        keep_state: bool = False,
        biases: Sequence[float] | None = None,
    ) -> tuple[list[tuple[str, dict]], PromptState | None]:
        """Greedy (or beam) decode one batch (:func:`neko.infer.generation.generate`), each item up
        to its own token limit. ``biases``: each item's copy bias instead of its default (inf =
        constrained generation)."""
        limits = [p.max_new_tokens or new_token_limit(self.options, len(p.input_ids)) for p in items]
        return generation.generate(
            self.model,
            self.tokenizer,
            [p.input_ids for p in items],
            limits,
            pad_id=self.pad_id,
            eos_ids=self.eos_ids,
            num_beams=self.options.num_beams,
            need_scores=need_scores,
            want_experts=want_experts,
            keep_state=keep_state,
            logits_processor=self._copy_bias(items, biases),
        )

    def _copy_bias(
        self, items: list[PreparedItem], biases: Sequence[float] | None = None
    ) -> LogitsProcessorList | None:
        """A logits processor favouring each row's input tokens, or None when no row is biased.
        ``biases``: per row, instead of ``options.copy_bias_for`` (inf = the row's input tokens only)."""
        biases = list(biases) if biases is not None else [self.options.copy_bias_for(p.nbest) for p in items]
        return generation.copy_bias(
            self.model,
            self.tokenizer,
            [p.hypotheses for p in items],
            biases,
            eos_ids=self.eos_ids,
            num_beams=self.options.num_beams,
        )

    def _score(
        self,
        batch: list[_Row],
        state: PromptState | None,
        state_rows: list[_Row],
        all_outputs: bool,
        constrained: bool,
    ) -> None:
        """Score the candidates of the rows whose decision needs them (:func:`~.rescore.score_rows`)."""
        needed = [
            r
            for r in batch
            if all_outputs
            or (constrained and r.constrained is not None)
            or (not r.agree and needs_scores(r.policy, r.mode, r.guard, r.scores))
        ]
        if all_outputs or constrained or any(r.details for r in batch):
            # evaluation, tuning and details read every score, on every row the state covers
            if state is not None and any(r in state_rows for r in needed):
                self._score_rows(state_rows, (True, True), state)
            rest = [r for r in needed if state is None or r not in state_rows]
            if rest:
                self._score_rows(rest, (True, True))
            return
        # Otherwise only the scores a row's policy weights (neko.infer.policy.scores_needed): the
        # task-prompt scores read every prompt again unless a generation left its state behind.
        cond = [r for r in needed if scores_needed(r.policy.rescore)[0]]
        in_state = [r for r in cond if r in state_rows]
        if in_state and state is not None:
            index = [state_rows.index(r) for r in in_state]
            self._score_rows(in_state, (True, False), state.rows(self.model, index))
        rest = [r for r in cond if r not in in_state]
        if rest:
            self._score_rows(rest, (True, False))
        lm = [r for r in needed if scores_needed(r.policy.rescore)[1]]
        if lm:
            self._score_rows(lm, (False, True))

    def _score_rows(
        self, rows: list[_Row], kinds: tuple[bool, bool] = (True, True), state: PromptState | None = None
    ) -> None:
        bos = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.eos_ids[0]
        score_rows(
            self.model,
            self.tokenizer,
            [r.item.input_ids for r in rows],
            [r.scores for r in rows],
            pad_id=self.pad_id,
            bos_id=bos,
            state=state,
            cond=kinds[0],
            lm=kinds[1],
        )

    def _decide(self, row: _Row) -> CorrectionResult:
        p, s, mode = row.item, row.scores, row.mode
        d: Decision | None = decide(row.policy, s, mode=mode, guard=row.guard) if p.hypotheses else None
        res = CorrectionResult(
            d.text if d is not None else s.generated,
            id=p.id,
            task=p.task,
            generated=s.generated,
            rescored=d.rescored if d is not None else None,
            constrained=s.con_generated,
            decision=d.to_dict(mode) if d is not None else None,
            scores=s if s.cond is not None or s.lm is not None else None,
        )
        if row.details:
            # the details of the generation the mode returns (the free one by default)
            info = row.constrained if mode == "constrained" else row.free
            info = info or row.free or row.constrained
            res.details = info[1] if info is not None else {"prompt_tokens": len(p.input_ids)}
        return res

    # ---- the answer LM: N-best rescoring with no task prompt ----

    def lm_scores(self, candidates: Sequence[Sequence[str]]) -> list[list[CandidateScore]]:
        """Answer-LM scores ``log P(candidate + EOS | empty input)`` (the model's answer context,
        :func:`~.rescore.answer_prompt_ids`) per candidate list: N-best rescoring with no task prompt (``CandidateScore`` per candidate)."""
        return answer_lm_scores(
            self.model,
            self.tokenizer,
            answer_prompt_ids(self.tokenizer, self.use_chat_template),
            candidates,
            pad_id=self.pad_id,
            batch_size=self.options.batch_size,
        )
