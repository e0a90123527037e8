"""What the Corrector takes and gives: user items, prepared items and results.

A user item (a str, an N-best list, an :class:`Example` or a neko-row dict) becomes an
:class:`Example` here (:func:`to_example`), then a :class:`PreparedItem` (prompt and token ids, or the
reason it was refused) and finally a :class:`CorrectionResult`. The recognizer's per-hypothesis
scores (:func:`recognizer_scores`) travel with the item, aligned with the hypotheses the model sees.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from neko.infer.policy import RowScores
from neko.schema import Example, SchemaError, clean_nbest, example_from_dict
from neko.tasks import TaskRegistry

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "AM_CLIP",
    "CorrectionResult",
    "Item",
    "PreparedItem",
    "body_prompt",
    "check_hypotheses",
    "fewshot_examples",
    "is_nbest",
    "recognizer_scores",
    "to_example",
]

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


def is_nbest(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and all(isinstance(h, str) for h in x)


def to_example(item: Item, task: str | None, index: int, registry: TaskRegistry) -> Example:
    """One user item as an Example (``task`` for items without one); ValueError says what is wrong
    (naming the ``registry``'s tasks when a bare text comes without one)."""
    if isinstance(item, bytes):
        try:
            item = item.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"input is not valid UTF-8 (byte {e.start}); re-encode it as UTF-8") from None
    if isinstance(item, Example):
        ex = item if item.task or task is None else dataclasses.replace(item, task=task)
    elif isinstance(item, Mapping):
        try:
            ex = example_from_dict(dict(item), default_task=task, line=index)
        except SchemaError as e:
            raise ValueError(str(e)) from None
        if "id" not in item:
            ex = dataclasses.replace(ex, id=str(index))
    elif isinstance(item, str) or is_nbest(item):
        if task is None:
            raise ValueError(
                f"no task for a bare {'text' if isinstance(item, str) else 'N-best list'}; pass task= "
                f"(one of {', '.join(registry.names())})"
            )
        ex = Example(id=str(index), task=task, input=item if isinstance(item, str) else list(item))
    else:
        raise ValueError(
            f"cannot correct a {type(item).__name__}; pass a str, an N-best list of str, an Example or a dict"
        )
    return ex


def check_hypotheses(hypotheses: Sequence[str], max_chars: int) -> None:
    """ValueError unless the hypotheses are encodable, not all empty, and at most ``max_chars`` long."""
    for h in hypotheses:
        try:
            h.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("input is not valid UTF-8 (lone surrogate); re-encode it as UTF-8") from None
    if not clean_nbest(hypotheses, dedup=False):
        raise ValueError("empty input: nothing to correct")
    n_chars = sum(len(h) for h in hypotheses)
    if n_chars > max_chars:
        raise ValueError(
            f"input of {n_chars} characters exceeds the limit of {max_chars}; split it or raise max_input_chars"
        )


def fewshot_examples(fewshot: Any, task: str) -> list[Example]:
    """The solved examples for ``task``: ``fewshot`` is a list of them (Examples or row dicts) or
    ``{task: list}``."""
    shots = fewshot.get(task, ()) if isinstance(fewshot, Mapping) else (fewshot or ())
    return [s if isinstance(s, Example) else example_from_dict(dict(s)) for s in shots]


def body_prompt(tokenizer: PreTrainedTokenizerBase, use_chat_template: bool, body: str) -> str:
    """A raw prompt body (instruction + input) as the model's prompt: its chat template's user turn,
    or the plain layout of :func:`neko.tasks.build_prompt`."""
    template = getattr(tokenizer, "chat_template", None)
    if use_chat_template and template:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
        )
    return f"INPUT:\n{body}\nOUTPUT:\n"


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
