"""The Python correction API: ``Corrector.from_pretrained(dir).correct(items)``.

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
- The recognizer's per-hypothesis scores (``meta["am_score"]``, else ``meta["score"]``) travel with
  the item, aligned with the hypotheses the model sees (empty ones dropped with their scores).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from neko.infer.options import CorrectionOptions, new_token_limit, resolve_device, resolve_dtype
from neko.infer.policy import (
    Decision,
    Policy,
    RowScores,
    TaskPolicy,
    decide,
    hypotheses_agree,
    load_policy,
)
from neko.infer.rescore import PromptState, score_candidates
from neko.model.safeload import UnsafeWeights, weights_only_errors
from neko.schema import Example, SchemaError, clean_nbest, example_from_dict

__all__ = ["Corrector", "CorrectionResult", "PreparedItem"]

Item = str | bytes | Sequence[str] | Example | Mapping[str, Any]


@dataclass
class CorrectionResult:
    """One corrected item. ``text`` is None when ``error`` says why the item could not be corrected.

    ``text`` is what the task's policy returns (:mod:`neko.infer.policy`); ``decision`` says how:
    ``mode`` (generate / rescore / keep / constrained), ``used`` (generated / rescored / input), the
    chosen hypothesis ``index`` (-1 = the generated text), the ``reasons`` (the guard's when it
    rejected the generated text, or ``"hypotheses agree"``), and the guard's ``features``.
    ``generated`` is the raw model output, ``constrained`` the raw N-best-constrained generation and
    ``rescored`` the N-best rescoring's choice, each None when that step did not run.
    ``details`` (on request): ``token_logprobs``, ``mean_logprob``, ``prompt_tokens``,
    ``generated_tokens``, ``max_new_tokens`` and ``experts`` (per router layer, per-expert counts of
    top-K selections over the prompt tokens and over the generated tokens fed back to the model (a
    last token cut by the token limit never is); None for dense models or beam search).
    """

    text: str | None
    id: str | None = None
    task: str | None = None
    error: str | None = None
    generated: str | None = None
    rescored: str | None = None
    constrained: str | None = None
    decision: dict[str, Any] | None = None
    details: dict[str, Any] | None = None
    scores: RowScores | None = None  # the candidate scores the decision used (for policy tuning)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class PreparedItem:
    """A validated item ready to decode (``error`` set = rejected before decoding)."""

    id: str | None
    task: str | None
    hypotheses: list[str]
    prompt: str | None = None
    input_ids: list[int] | None = None
    error: str | None = None
    max_new_tokens: int | None = None  # this item's generation limit (see CorrectionOptions)
    nbest: bool = False  # the input is an N-best list (rescoring applies)
    am: list[float] | None = None  # the recognizer's score per hypothesis, aligned; None = none


def _is_nbest(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and all(isinstance(h, str) for h in x)


class Corrector:
    """A loaded correction model. Build with :meth:`from_pretrained`; call :meth:`correct`."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        registry: Any = None,
        use_chat_template: bool = True,
        options: CorrectionOptions | None = None,
        policy: Policy | None = None,
        model_dir: str | Path | None = None,
    ) -> None:
        from neko.model.experts import set_router_top_k
        from neko.tasks import REGISTRY

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
        eos = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        self.eos_ids = sorted(e for e in eos if e is not None)
        if not self.eos_ids:
            raise ValueError(
                "the tokenizer has no EOS token; set eos_token in the model directory's tokenizer"
            )
        self.max_positions = getattr(model.config, "max_position_embeddings", None)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, options: CorrectionOptions | None = None) -> Corrector:
        """Load a neko model directory (weights + tokenizer + neko_prompts.json [+ neko_policy.json])."""
        from safetensors import SafetensorError

        from neko.tasks import load_prompt_config

        options = options or CorrectionOptions()
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(
                f"{model_dir}: model directory not found; pass the directory `neko train` wrote"
            )
        if not (model_dir / "config.json").exists():
            raise ValueError(
                f"{model_dir}: not a model directory (no config.json); pass a directory saved with save_pretrained"
            )
        try:
            config = AutoConfig.from_pretrained(str(model_dir))
        except (ValueError, OSError, KeyError) as e:
            raise ValueError(f"{model_dir}: unreadable config.json ({e})") from None
        if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ValueError(
                f"{model_dir}: model type {config.model_type!r} is not a causal language model; "
                "neko corrects with decoder-only LMs (e.g. Mixtral, Qwen2-MoE, Llama)"
            )
        # the prompts first: a refused template (issue 23.3) fails before the weights are read
        registry, use_chat = load_prompt_config(model_dir)
        device = resolve_device(options.device)
        dtype = resolve_dtype(options.dtype, device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        except (ValueError, OSError) as e:
            raise ValueError(
                f"{model_dir}: no usable tokenizer ({e}); save the tokenizer with the model"
            ) from None
        try:
            with weights_only_errors(model_dir):
                model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
        except UnsafeWeights:
            raise
        except (OSError, ValueError, RuntimeError, SafetensorError) as e:
            raise ValueError(f"{model_dir}: could not load the model weights ({e})") from None
        model.to(device)
        model.requires_grad_(False)  # inference only; never flip the process-wide grad mode
        return cls(
            model,
            tokenizer,
            registry=registry,
            use_chat_template=use_chat,
            options=options,
            policy=load_policy(model_dir),
            model_dir=model_dir,
        )

    # ---- preparation (validation + prompt) ----

    def _to_example(self, item: Item, task: str | None, index: int) -> Example:
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"input is not valid UTF-8 (byte {e.start}); re-encode it as UTF-8"
                ) from None
        if isinstance(item, Example):
            ex = item if item.task or task is None else dataclasses.replace(item, task=task)
        elif isinstance(item, Mapping):
            try:
                ex = example_from_dict(dict(item), default_task=task, line=index)
            except SchemaError as e:
                raise ValueError(str(e)) from None
            if "id" not in item:
                ex = dataclasses.replace(ex, id=str(index))
        elif isinstance(item, str) or _is_nbest(item):
            if task is None:
                raise ValueError(
                    f"no task for a bare {'text' if isinstance(item, str) else 'N-best list'}; pass task= "
                    f"(one of {', '.join(self.registry.names())})"
                )
            ex = Example(id=str(index), task=task, input=item if isinstance(item, str) else list(item))
        else:
            raise ValueError(
                f"cannot correct a {type(item).__name__}; pass a str, an N-best list of str, an Example or a dict"
            )
        return ex

    def prepare(
        self, item: Item, task: str | None = None, fewshot: Any = None, index: int = 0
    ) -> PreparedItem:
        """Validate one item and build its prompt; problems become ``PreparedItem.error``."""
        from neko.tasks import build_prompt

        ident, tname, hyps = str(index), task, []
        try:
            ex = self._to_example(item, task, index)
            ident, tname, hyps = ex.id, ex.task, ex.hypotheses
            for h in hyps:
                try:
                    h.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError(
                        "input is not valid UTF-8 (lone surrogate); re-encode it as UTF-8"
                    ) from None
            if not clean_nbest(hyps, dedup=False):
                raise ValueError("empty input: nothing to correct")
            n_chars = sum(len(h) for h in hyps)
            if n_chars > self.options.max_input_chars:
                raise ValueError(
                    f"input of {n_chars} characters exceeds the limit of {self.options.max_input_chars}; "
                    "split it or raise max_input_chars"
                )
            try:
                template = self.registry.get(ex.task).template
            except KeyError as e:
                raise ValueError(e.args[0]) from None
            shots = fewshot.get(ex.task, ()) if isinstance(fewshot, Mapping) else (fewshot or ())
            shots = [s if isinstance(s, Example) else example_from_dict(dict(s)) for s in shots]
            prompt = build_prompt(
                ex,
                tokenizer=self.tokenizer,
                fewshot=shots,
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
            return PreparedItem(
                id,
                None,
                [],
                error=f"prompt of {len(body)} characters exceeds the limit of {self.options.max_input_chars}",
            )
        template = getattr(self.tokenizer, "chat_template", None)
        if self.use_chat_template and template:
            prompt = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
            )
        else:
            prompt = f"INPUT:\n{body}\nOUTPUT:\n"  # the plain layout of neko.tasks.build_prompt
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

    # ---- decoding ----

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

        with torch.no_grad():
            return self._run(prepared, details, all_outputs, constrained)

    def task_policy(self, p: PreparedItem) -> tuple[TaskPolicy, str, bool]:
        """(policy, mode, guard on) for one item under the options: ``mode="auto"`` follows the saved
        policy (generation when the model has none); ``guard="auto"`` is on when a policy was tuned;
        ``keep_if_agree`` None follows the policy (on by default)."""
        tuned = self.policy is not None
        tp = self.policy.for_task(p.task, p.nbest) if tuned else TaskPolicy("generate")
        if self.options.keep_if_agree is not None:
            tp = dataclasses.replace(tp, keep_if_agree=self.options.keep_if_agree)
        mode = self.options.mode if self.options.mode != "auto" else tp.mode
        if not p.hypotheses:  # a raw prompt body: nothing to keep or rescore
            mode = "generate"
        guard = self.options.guard == "on" or (self.options.guard == "auto" and tuned)
        return tp, mode, guard

    def _run(
        self,
        prepared: Sequence[PreparedItem],
        details: bool | Sequence[bool],
        all_outputs: bool,
        constrained: bool = False,
    ) -> list[CorrectionResult]:
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
            chunk = todo[start : start + bs]
            plans = [self.task_policy(prepared[i]) for i in chunk]
            # Hypotheses that agree: the policy returns the 1-best, the model need not run.
            agree = [
                tp.keep_if_agree and hypotheses_agree(prepared[i].hypotheses)
                for i, (tp, _, _) in zip(chunk, plans, strict=True)
            ]
            gen = [
                k
                for k, (_, mode, _) in enumerate(plans)
                if all_outputs or (mode == "generate" and not agree[k])
            ]
            con = [
                k
                for k, (_, mode, _) in enumerate(plans)
                if prepared[chunk[k]].hypotheses
                and not agree[k]
                and (mode == "constrained" or (constrained and prepared[chunk[k]].nbest))
            ]
            outs: dict[int, tuple[str, dict]] = {}
            couts: dict[int, tuple[str, dict]] = {}
            state, state_rows = None, []
            if gen:
                decoded, state = self._generate(
                    [prepared[chunk[k]] for k in gen],
                    need_scores=True,
                    want_experts=any(want[chunk[k]] for k in gen),
                    keep_state=True,
                )
                outs = dict(zip(gen, decoded, strict=True))
                state_rows = gen
            if con:
                # the copy bias at inf: only the input hypotheses' tokens (and EOS, punctuation)
                decoded, cstate = self._generate(
                    [prepared[chunk[k]] for k in con],
                    need_scores=True,
                    want_experts=any(want[chunk[k]] for k in con),
                    keep_state=state is None,
                    biases=[math.inf] * len(con),
                )
                couts = dict(zip(con, decoded, strict=True))
                if state is None:
                    state, state_rows = cstate, con
            rows = [
                RowScores(
                    prepared[i].hypotheses,
                    am=prepared[i].am,
                    generated=outs[k][0] if k in outs else None,
                    con_generated=couts[k][0] if k in couts else None,
                )
                for k, i in enumerate(chunk)
            ]
            for k, r in enumerate(rows):
                if k in outs:
                    r.gen_mean_logprob = outs[k][1].get("mean_logprob")
                if k in couts:
                    r.con_mean_logprob = couts[k][1].get("mean_logprob")
            scored = {
                k
                for k, (tp, mode, guard) in enumerate(plans)
                if all_outputs
                or (constrained and k in couts)
                or (not agree[k] and _needs_scores(tp, mode, guard, rows[k]))
            }
            if state is not None and scored & set(state_rows):
                # these items' prompts are read already: score all of them on that state
                self._score_rows(
                    [prepared[chunk[k]] for k in state_rows], [rows[k] for k in state_rows], state
                )
            rest = sorted(scored - set(state_rows) if state is not None else scored)
            if rest:
                self._score_rows([prepared[chunk[k]] for k in rest], [rows[k] for k in rest])
            for k, i in enumerate(chunk):
                p, (tp, mode, guard) = prepared[i], plans[k]
                d: Decision = decide(tp, rows[k], mode=mode, guard=guard) if p.hypotheses else None
                text = d.text if d is not None else rows[k].generated
                res = CorrectionResult(
                    text,
                    id=p.id,
                    task=p.task,
                    generated=rows[k].generated,
                    rescored=d.rescored if d is not None else None,
                    constrained=rows[k].con_generated,
                    decision=d.to_dict(mode) if d is not None else None,
                    scores=rows[k] if rows[k].cond is not None else None,
                )
                if want[i]:
                    # the details of the generation the mode returns (the free one by default)
                    info = couts.get(k) if mode == "constrained" else outs.get(k)
                    info = info or outs.get(k) or couts.get(k)
                    res.details = info[1] if info is not None else {"prompt_tokens": len(p.input_ids)}
                results[i] = res
        return results  # type: ignore[return-value]

    def item_copy_bias(self, item: PreparedItem) -> float:
        """The copy bias this item is generated with (see CorrectionOptions.copy_bias)."""
        if self.options.copy_bias is not None:
            return self.options.copy_bias
        return 0.0 if item.nbest else 1.5

    def _copy_bias(
        self, items: list[PreparedItem], biases: Sequence[float] | None = None
    ) -> LogitsProcessorList | None:
        """A logits processor favouring each row's input tokens, or None when no row is biased.
        ``biases``: per row, instead of :meth:`item_copy_bias` (inf = the row's input tokens only)."""

        biases = list(biases) if biases is not None else [self.item_copy_bias(p) for p in items]
        if not any(b > 0 for b in biases):
            return None
        vocab = self.model.get_output_embeddings().weight.shape[0]
        allowed = torch.zeros((len(items), vocab), dtype=torch.bool)
        always = list(self.eos_ids) + self._punctuation_ids()
        for b, p in enumerate(items):
            if biases[b] == 0:
                continue
            forms: set[str] = set()
            for h in p.hypotheses:
                forms.update((h, h[:1].upper() + h[1:]))
                for w in h.split():
                    cap = w[:1].upper() + w[1:]
                    forms.update((w, f" {w}", cap, f" {cap}"))
            encoded = self.tokenizer(sorted(forms), add_special_tokens=False)["input_ids"] if forms else []
            ids = set(always).union(*encoded)
            allowed[b, [i for i in ids if i < vocab]] = True
        # Beam search expands each row into num_beams consecutive rows.
        beams = self.options.num_beams
        allowed = allowed.repeat_interleave(beams, dim=0)
        bias = torch.tensor(biases, dtype=torch.float32).repeat_interleave(beams)
        hard = torch.isinf(bias)
        # bias * mask, with a hard row meaning "input tokens only": -inf off the mask, 0 on it.
        offset = torch.where(allowed, torch.where(hard, 0.0, bias)[:, None], 0.0)
        offset = torch.where(hard[:, None] & ~allowed, float("-inf"), offset).to(self.model.device)

        class CopyBias(LogitsProcessor):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                return scores + offset.to(scores.dtype)  # a no-op cast for fp32 scores

        return LogitsProcessorList([CopyBias()])

    def _punctuation_ids(self) -> list[int]:
        marks = [".", ",", "?", "!", "'", '"', ":", ";", "-", "(", ")"]
        encoded = self.tokenizer(marks + [f" {m}" for m in marks], add_special_tokens=False)["input_ids"]
        return [i for ids in encoded for i in ids]

    def _candidate_ids(self, text: str) -> list[int]:
        """A candidate answer as training saw it: the text, then EOS (stopping is part of the answer).

        A hypothesis written like ASR output (no capital letter, no final punctuation) is scored in
        sentence case with a full stop, the form of the answers the model learned: otherwise the
        model's surprise at the form drowns its judgement of the words (on ASR dev rows the answer-LM
        rescoring went from -8% to -15% relative WER with it; bench/NOTES.md)."""
        return self.tokenizer(sentence_form(text) + self.tokenizer.eos_token, add_special_tokens=False)[
            "input_ids"
        ]

    def lm_prompt_ids(self) -> list[int]:
        """The model's answer context with an empty input: what the "answer LM" scores text under
        (the chat template's assistant turn after an empty user turn, or the plain layout's OUTPUT:).
        Any causal LM has one; for a model trained on corrections it is an LM of corrected text."""
        template = getattr(self.tokenizer, "chat_template", None)
        if self.use_chat_template and template:
            prompt = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": ""}], tokenize=False, add_generation_prompt=True
            )
        else:
            prompt = "INPUT:\n\nOUTPUT:\n"  # the plain layout of neko.tasks.build_prompt
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def lm_scores(self, candidates: Sequence[Sequence[str]]) -> list[list[Any]]:
        """Answer-LM scores ``log P(candidate + EOS | empty input)`` (:meth:`lm_prompt_ids`) per
        candidate list: N-best rescoring with no task prompt (``CandidateScore`` per candidate)."""

        prompt = self.lm_prompt_ids()
        out: list[list[Any]] = []
        bs = self.options.batch_size
        with torch.no_grad():
            for start in range(0, len(candidates), bs):
                chunk = candidates[start : start + bs]
                ids = [[self._candidate_ids(c) for c in cs] for cs in chunk]
                out += score_candidates(self.model, [prompt] * len(chunk), ids, pad_id=self.pad_id)
        return out

    def _score_rows(
        self, items: list[PreparedItem], rows: list[RowScores], state: PromptState | None = None
    ) -> None:
        """Fill ``cond`` / ``lm`` / ``ntok`` (and the generated texts') in place: each hypothesis (and
        the generated texts) scored under the item's prompt, and under no prompt at all (BOS only)."""
        cands = [
            list(r.hypotheses) + [g for g in (r.generated, r.con_generated) if g is not None] for r in rows
        ]
        ids = [[self._candidate_ids(c) for c in cs] for cs in cands]
        bos = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.eos_ids[0]
        cond = score_candidates(
            self.model, [p.input_ids for p in items], ids, pad_id=self.pad_id, state=state
        )
        lm = score_candidates(self.model, [[bos]] * len(items), ids, pad_id=self.pad_id)
        for r, c, m in zip(rows, cond, lm, strict=True):
            n = len(r.hypotheses)
            r.cond = [x.logprob for x in c[:n]]
            r.lm = [x.logprob for x in m[:n]]
            r.ntok = [x.tokens for x in c[:n]]
            if r.generated is not None:
                r.gen_cond, r.gen_lm, r.gen_ntok = c[n].logprob, m[n].logprob, c[n].tokens
                n += 1
            if r.con_generated is not None:
                r.con_cond, r.con_lm, r.con_ntok = c[n].logprob, m[n].logprob, c[n].tokens

    def _generate(
        self,
        items: list[PreparedItem],
        need_scores: bool,
        want_experts: bool,
        keep_state: bool = False,
        biases: Sequence[float] | None = None,
    ) -> tuple[list[tuple[str, dict]], PromptState | None]:
        """Greedy (or beam) decode one batch: (text, info) per item, and with ``keep_state`` the
        prompts' :class:`PromptState` recovered from the generation (greedy only), for rescoring.
        ``biases``: each item's copy bias instead of its default (inf = constrained generation)."""

        from neko.model.experts import ExpertRecorder

        device = self.model.device
        T0 = max(len(p.input_ids) for p in items)
        ids = torch.full((len(items), T0), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), T0), dtype=torch.long)
        for b, p in enumerate(items):
            n = len(p.input_ids)
            ids[b, T0 - n :] = torch.tensor(p.input_ids, dtype=torch.long)
            mask[b, T0 - n :] = 1
        recorder = ExpertRecorder(self.model) if want_experts and self.options.num_beams == 1 else None
        limits = [p.max_new_tokens or new_token_limit(self.options, len(p.input_ids)) for p in items]
        kwargs = dict(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max(limits),
            stopping_criteria=_row_limits(limits, T0) if len(set(limits)) > 1 else None,
            logits_processor=self._copy_bias(items, biases),
            do_sample=False,
            num_beams=self.options.num_beams,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            return_dict_in_generate=True,
            output_scores=need_scores,
        )
        keep_state = keep_state and self.options.num_beams == 1
        if keep_state:
            kwargs["output_logits"] = True
        with torch.inference_mode():
            if recorder is not None and recorder.active:
                with recorder.record():
                    out = self.model.generate(**kwargs)
            else:
                out = self.model.generate(**kwargs)
            logprobs = None
            if need_scores:
                logprobs = (
                    self.model.compute_transition_scores(
                        out.sequences, out.scores, getattr(out, "beam_indices", None), normalize_logits=True
                    )
                    .float()
                    .cpu()
                )
        state = None
        if keep_state:
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            if cache is not None:
                # The cache holds the prompt and every generated token but the last; keep the prompt.
                cache.crop(T0 - cache.get_seq_length())
                state = PromptState(torch.log_softmax(out.logits[0].float(), dim=-1), cache, mask)
        gen = out.sequences[:, T0:].cpu()
        eos = set(self.eos_ids)
        texts, lengths, infos = [], [], []
        for b in range(len(items)):
            row = gen[b].tolist()
            # a row stopped at its own limit is padded after it, with no EOS
            n = min(next((k for k, t in enumerate(row) if t in eos), len(row)), limits[b])
            # Beam search right-pads finished hypotheses; drop pad ids that are not EOS.
            toks = [t for t in row[:n] if t != self.pad_id or self.pad_id in eos]
            texts.append(self.tokenizer.decode(toks, skip_special_tokens=True).strip())
            lengths.append(n)
            info: dict[str, Any] = {
                "prompt_tokens": len(items[b].input_ids),
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
        if want_experts:
            counts = recorder.counts(mask, lengths) if recorder is not None and recorder.active else None
            for b, info in enumerate(infos):
                info["experts"] = counts[b] if counts is not None else None
        return list(zip(texts, infos, strict=True)), state

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
        single = isinstance(item_or_list, (str, bytes, Example, Mapping)) or _is_nbest(item_or_list)
        if single:
            return self.correct_batch([item_or_list], task=task, fewshot=fewshot, details=details)[0]
        return self.correct_batch(list(item_or_list), task=task, fewshot=fewshot, details=details)

    def correct_batch(
        self, items: Sequence[Item], task: str | None = None, fewshot: Any = None, details: bool = False
    ) -> list[CorrectionResult]:
        """Correct every element of ``items`` as its own item (plain strings are single texts here)."""
        prepared = [self.prepare(it, task=task, fewshot=fewshot, index=i) for i, it in enumerate(items)]
        return self.run(prepared, details=details)


def sentence_form(text: str) -> str:
    """``"the cat sat"`` -> ``"The cat sat."``; text with any capital letter or a final ``.?!`` as is."""
    t = text.strip()
    if not t or any(ch.isupper() for ch in t) or t[-1] in ".?!":
        return text
    return t[0].upper() + t[1:] + "."


def _needs_scores(tp: TaskPolicy, mode: str, guard: bool, row: RowScores) -> bool:
    """Whether deciding this row needs candidate scores (they cost a forward pass over the prompt)."""
    if mode == "keep":
        return False
    several = len(set(row.hypotheses)) > 1
    if mode == "rescore":
        return several
    # generate / constrained: only the guard uses scores (its margin test, and the rescored
    # fallback it returns)
    text = row.generation(mode)[0]
    return guard and text is not None and (several or tp.guard.min_margin > float("-inf"))


# The largest difference from the 1-best's recognizer score that rescoring sees (see recognizer_scores).
AM_CLIP = 1.0


def recognizer_scores(ex: Example) -> list[float] | None:
    """The recognizer's score of each hypothesis the model sees (``meta["am_score"]``, else
    ``meta["score"]``; higher = better) minus the 1-best's, clipped to +-``AM_CLIP``; or None: absent,
    not a list of finite numbers, or not one per hypothesis. Hypotheses the Corrector drops (empty,
    ``<UNK>``) are dropped with their score."""
    value = next((ex.meta.get(k) for k in ("am_score", "score") if ex.meta.get(k) is not None), None)
    hyps = ex.hypotheses
    if not isinstance(value, (list, tuple)) or len(value) != len(hyps) or not ex.is_nbest:
        return None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value):
        return None
    kept = [float(x) for h, x in zip(hyps, value, strict=True) if clean_nbest([h], dedup=False)]
    if not kept:
        return None
    # Relative to the 1-best and clipped: recognizers write scores on different scales (a mean
    # token log-prob like Whisper's differs by ~0.01-0.3 between hypotheses, a summed one by several
    # units), so a weight tuned on one scale must not let another scale overrule the model; a big
    # gap only ever says "as far from the 1-best as the clip allows".
    return [min(max(x - kept[0], -AM_CLIP), AM_CLIP) for x in kept]


def _row_limits(limits: list[int], prompt_len: int) -> StoppingCriteriaList:
    """Stop each row of a batch at its own token limit (generate's max_new_tokens is the batch's)."""

    class RowLimits(StoppingCriteria):
        def __init__(self) -> None:
            self.limits = torch.tensor(limits)

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            done = (input_ids.shape[1] - prompt_len) >= self.limits
            return done.to(input_ids.device)

    return StoppingCriteriaList([RowLimits()])
