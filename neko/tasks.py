"""Correction tasks: the registry, the paper's prompts (Figure 3), user tasks and few-shot prompts.

Design choices:
- The built-in instructions are the paper's Figure 3 wording, each on one line (the line breaks in
  the figure are the PDF's wrapping). Figure 3 swaps the two TEC labels; we follow Figure 8 and
  ``shared/docs/formats-and-eval.md``: "Remove all grammatical errors from this text" is
  ``tec-grammar``, "Fix coherence in this sentence" is ``tec-coherence``.
- N-best lists render in Python list form (``repr`` of the list, so quotes inside hypotheses stay
  unambiguous) and the "5-best" count follows the list's real length. Empty and ``<UNK>`` hypotheses
  are left out, duplicates kept, nothing padded (the N-best policy in :mod:`neko.schema`).
- A single text is shown in the figure's ``'...'`` form with whitespace collapsed to single spaces
  (OCR line breaks become spaces), so the prompt never depends on the page layout.
- Few-shot: :func:`select_fewshot` draws k solved same-task rows with a seeded RNG, excluding the
  query itself; :func:`build_prompt` renders them as earlier solved turns of the same format.
- One prompt builder (:func:`build_prompt`) serves training, inference and few-shot, so the model
  is always asked exactly what it was trained on. With a tokenizer that has a chat template the
  body becomes a user turn and the answer the assistant turn; otherwise the paper's plain
  ``INPUT:/OUTPUT:`` layout is used.
"""

from __future__ import annotations

import difflib
import json
import random
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from neko.io import atomic_write_json
from neko.schema import Example, clean_nbest

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "Task",
    "TaskRegistry",
    "REGISTRY",
    "get_task",
    "render_body",
    "build_prompt",
    "select_fewshot",
    "load_task_config",
    "save_prompt_config",
    "load_prompt_config",
    "PROMPT_CONFIG_FILE",
]

InputKind = Literal["nbest", "text"]
_FIELDS = {"hypotheses", "text", "n", "source_lang", "target_lang"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Largest width/precision a template's format spec may ask for (see Task.__post_init__).
MAX_FORMAT_NUMBER = 1000
# A template is an instruction with its input quoted once or twice: a template that repeats
# "{text:1000}" thousands of times made every prompt gigabytes long (issue 23.3), so its length and
# its number of fields are bounded when it is loaded, before any prompt is built.
MAX_TEMPLATE_CHARS = 10_000
MAX_TEMPLATE_FIELDS = 8


@dataclass(frozen=True)
class Task:
    """A correction task.

    name: registry key (``asr``, ``ocr``, ...).
    template: instruction with ``str.format`` fields from {hypotheses, text, n, source_lang, target_lang}.
    input_kind: ``nbest`` (list input, rendered as a Python list) or ``text`` (single quoted text).
    metric: ``wer`` or ``bleu``: how ``neko eval`` scores it.
    """

    name: str
    template: str
    input_kind: InputKind = "text"
    metric: Literal["wer", "bleu"] = "wer"
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                f"task name {self.name!r} must be a non-empty string of letters, digits, '-', '_' or '.'"
            )
        if not isinstance(self.template, str) or not self.template.strip():
            raise ValueError(f"task {self.name!r}: template must be a non-empty string")
        if self.input_kind not in ("nbest", "text"):
            raise ValueError(
                f"task {self.name!r}: input_kind must be 'nbest' or 'text', got {self.input_kind!r}"
            )
        if self.metric not in ("wer", "bleu"):
            raise ValueError(f"task {self.name!r}: metric must be 'wer' or 'bleu', got {self.metric!r}")
        try:
            parts = [
                (f, spec or "") for _, f, spec, _ in string.Formatter().parse(self.template) if f is not None
            ]
        except ValueError as e:
            raise ValueError(f"task {self.name!r}: template is not a valid format string ({e})") from None
        names = {f for f, _ in parts}
        if len(self.template) > MAX_TEMPLATE_CHARS or len(parts) > MAX_TEMPLATE_FIELDS:
            raise ValueError(
                f"task {self.name!r}: template of {len(self.template)} characters with {len(parts)} fields; "
                f"at most {MAX_TEMPLATE_CHARS} characters and {MAX_TEMPLATE_FIELDS} fields, since every field "
                "copies the input into every prompt"
            )
        for f, spec in parts:
            # A width or precision is padding the prompt builder would allocate: "{text:999999999}"
            # in a tasks config (or a model's neko_prompts.json) would stall or exhaust a server.
            if "{" in spec or any(int(n) > MAX_FORMAT_NUMBER for n in re.findall(r"\d+", spec)):
                raise ValueError(
                    f"task {self.name!r}: format spec {{{f}:{spec}}} is not allowed; widths and precisions "
                    f"go up to {MAX_FORMAT_NUMBER} and may not be nested fields"
                )
        bad = names - _FIELDS
        if bad:
            raise ValueError(
                f"task {self.name!r}: unknown template field(s) {sorted(bad)}; allowed: {sorted(_FIELDS)}"
            )
        if not names & {"hypotheses", "text"}:
            # A prompt without the input would train the model to answer blind.
            raise ValueError(f"task {self.name!r}: template must contain {{hypotheses}} or {{text}}")
        try:  # a spec the values cannot take ("{n:s}") fails here, not on the first request
            self.template.format(hypotheses="['a']", text="a", n=1, source_lang="x", target_lang="y")
        except (ValueError, TypeError) as e:
            raise ValueError(f"task {self.name!r}: template cannot be filled in ({e})") from None


_ASR = (
    "The following text contains {n}-best hypotheses from an Automatic Speech Recognition system. "
    "As part of a speech recognition task, please perform error correction on the hypotheses to generate "
    "the most accurate transcription of the spoken text.\n{hypotheses}"
)
_TRANSLATION = (
    "The following text contains {n}-best hypotheses in {target_lang}, which were generated by translating "
    "a sentence originally in {source_lang}. As part of a machine translation task, please perform error "
    "correction on the hypotheses to generate the most accurate translation.\n{hypotheses}"
)
_OCR = (
    "The following text was generated by performing OCR (Optical Character Recognition) on an image of text. "
    "As part of an OCR post-processing task, please analyze the text to determine the most accurate "
    "transcription of the original text in the image.\n'{text}'"
)
_GRAMMAR = "Remove all grammatical errors from this text\n'{text}'"
_COHERENCE = "Fix coherence in this sentence\n'{text}'"
# Not in the paper's training mix: the unseen task for 0-/5-shot evaluation (paper, Appendix).
_TYPO = "Fix the spelling mistakes in this text\n'{text}'"

BUILTIN_TASKS: tuple[Task, ...] = (
    Task("asr", _ASR, "nbest", "wer", "speech recognition N-best correction"),
    Task("st", _TRANSLATION, "nbest", "bleu", "speech translation N-best correction"),
    Task("mt", _TRANSLATION, "nbest", "bleu", "machine translation N-best correction"),
    Task("ocr", _OCR, "text", "wer", "post-OCR correction"),
    Task("tec-grammar", _GRAMMAR, "text", "wer", "grammatical error correction"),
    Task("tec-coherence", _COHERENCE, "text", "wer", "coherence correction"),
    Task("typo", _TYPO, "text", "wer", "spelling correction (unseen in training)"),
)


class TaskRegistry:
    """Name -> Task, with duplicate-name errors and did-you-mean suggestions."""

    def __init__(self, tasks: Iterable[Task] = ()) -> None:
        self._tasks: dict[str, Task] = {}
        for t in tasks:
            self.register(t)

    def register(self, task: Task, *, replace: bool = False) -> Task:
        if task.name in self._tasks and not replace:
            raise ValueError(
                f"task {task.name!r} is already registered; pick another name or pass replace=True"
            )
        self._tasks[task.name] = task
        return task

    def get(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self._tasks, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise KeyError(
                f"unknown task {name!r}.{hint} Known tasks: {', '.join(self._tasks)}. "
                "Add your own with a tasks config (--tasks-config)."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def names(self) -> list[str]:
        return list(self._tasks)

    def copy(self) -> TaskRegistry:
        return TaskRegistry(self._tasks.values())

    def to_list(self) -> list[dict[str, Any]]:
        return [asdict(t) for t in self._tasks.values()]

    @classmethod
    def from_list(cls, rows: Sequence[dict[str, Any]]) -> TaskRegistry:
        return cls(Task(**r) for r in rows)


REGISTRY = TaskRegistry(BUILTIN_TASKS)


def get_task(name: str, registry: TaskRegistry | None = None) -> Task:
    return (registry or REGISTRY).get(name)


def load_task_config(path: str | Path, registry: TaskRegistry | None = None) -> TaskRegistry:
    """Add user tasks from a YAML or JSON file: a list of {name, template, input_kind[, metric, description]}.

    Returns a new registry (built-ins plus the file's tasks); the global one is not modified.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: tasks config not found")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; pass the tasks config file (YAML or JSON)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 (byte {e.start}); re-encode the tasks config as UTF-8") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: malformed YAML ({e})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}: line {e.lineno}: malformed JSON ({e.msg}); use .yaml for YAML"
            ) from None
    if isinstance(data, dict) and "tasks" in data:
        data = data["tasks"]
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: expected a list of tasks (or {{'tasks': [...]}}), got {type(data).__name__}"
        )
    reg = (registry or REGISTRY).copy()
    allowed = {"name", "template", "input_kind", "metric", "description"}
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: task #{i}: expected a mapping, got {type(row).__name__}")
        for key in ("name", "template", "input_kind", "metric", "description"):
            if key in row and not isinstance(row[key], str):
                raise ValueError(
                    f"{path}: task #{i}: '{key}' must be a string, got {type(row[key]).__name__}"
                )
        unknown = set(row) - allowed
        if unknown or "name" not in row or "template" not in row:
            raise ValueError(
                f"{path}: task #{i}: needs 'name' and 'template'; allowed keys {sorted(allowed)}"
                + (f"; unknown {sorted(unknown)}" if unknown else "")
            )
        try:
            reg.register(Task(**row))
        except ValueError as e:
            raise ValueError(f"{path}: task #{i}: {e}") from None
    return reg


def render_body(
    example: Example,
    task: Task | None = None,
    registry: TaskRegistry | None = None,
    max_chars: int | None = None,
) -> str:
    """The instruction + input text for one example (what Figure 3 shows after ``INPUT:``).

    ``max_chars``: refuse (ValueError) a body longer than this, measured before it is built."""
    task = task or get_task(example.task, registry)
    if task.input_kind == "nbest":
        hyps = clean_nbest(example.hypotheses, dedup=False) or [example.one_best]
        fields = {"hypotheses": repr(hyps), "n": len(hyps), "text": hyps[0]}
    else:
        text = example.one_best if example.is_nbest else str(example.input)
        fields = {"text": " ".join(text.split()), "hypotheses": repr([text]), "n": 1}
    fields["source_lang"] = example.source_lang or "an unknown language"
    fields["target_lang"] = example.target_lang or "the target language"
    if max_chars is not None:
        size = _body_size(task.template, fields)
        if size > max_chars:
            raise ValueError(
                f"task {task.name!r}: its prompt would be {size} characters, over the limit of {max_chars}; "
                "shorten the input (or the task's template)"
            )
    return task.template.format(**fields)


def _body_size(template: str, fields: dict[str, Any]) -> int:
    """An upper bound of ``len(template.format(**fields))`` computed without building it: each field
    is at most its value or its width (both bounded by Task's checks), each literal as written."""
    size = 0
    for literal, f, spec, _ in string.Formatter().parse(template):
        size += len(literal)
        if f is not None:
            widths = [int(n) for n in re.findall(r"\d+", spec or "")]
            size += max([len(str(fields.get(f, ""))), *widths])
    return size


def select_fewshot(
    pool: Iterable[Example], k: int, task: str, seed: int = 0, exclude_id: str | None = None
) -> list[Example]:
    """``k`` solved examples of ``task`` drawn from ``pool`` without replacement, reproducibly.

    Only rows of the same task with an output qualify; ``exclude_id`` (the query's own id) is never
    chosen, so a dev row can't be its own demonstration. The draw depends only on ``seed`` and the
    candidates in pool order, so the same seed gives the same shots on every machine. Too few
    candidates is an error rather than a silent k-1-shot prompt.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k == 0:
        return []
    candidates = [e for e in pool if e.task == task and e.output is not None and e.id != exclude_id]
    if len(candidates) < k:
        raise ValueError(
            f"few-shot: need {k} solved {task!r} examples in the pool, found {len(candidates)}"
            + (f" (excluding {exclude_id!r})" if exclude_id is not None else "")
            + "; use a larger pool (e.g. the dev split) or a smaller k"
        )
    return random.Random(seed).sample(candidates, k)


def _plain(body: str, answer: str | None) -> str:
    return f"INPUT:\n{body}\nOUTPUT:\n" + (answer if answer is not None else "")


def build_prompt(
    example: Example,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    fewshot: Sequence[Example] = (),
    registry: TaskRegistry | None = None,
    use_chat_template: bool = True,
    max_chars: int | None = None,
) -> str:
    """The full prompt text the model sees, ending where the answer starts.

    ``fewshot`` examples (with outputs) are prepended as solved turns. The answer itself is not
    included: training appends ``example.output`` + EOS, inference generates it.
    """
    shots = []
    for s in fewshot:
        if s.output is None:
            raise ValueError(f"few-shot example {s.id!r} has no output; few-shot examples must be solved")
        shots.append((render_body(s, registry=registry, max_chars=max_chars), s.output))
    body = render_body(example, registry=registry, max_chars=max_chars)
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if use_chat_template and template:
        messages: list[dict[str, str]] = []
        for b, a in shots:
            messages += [{"role": "user", "content": b}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": body})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(_plain(b, a) + "\n\n" for b, a in shots) + _plain(body, None)


PROMPT_CONFIG_FILE = "neko_prompts.json"


def save_prompt_config(
    directory: str | Path, registry: TaskRegistry | None = None, *, use_chat_template: bool = True
) -> Path:
    """Save the task registry and prompt style next to the weights, so inference asks exactly
    what training taught (``<model dir>/neko_prompts.json``)."""
    data = {"use_chat_template": use_chat_template, "tasks": (registry or REGISTRY).to_list()}
    return atomic_write_json(Path(directory) / PROMPT_CONFIG_FILE, data)


def load_prompt_config(directory: str | Path) -> tuple[TaskRegistry, bool]:
    """(registry, use_chat_template) saved with a model; the built-ins when the file is absent."""
    path = Path(directory) / PROMPT_CONFIG_FILE
    if not path.exists():
        return REGISTRY.copy(), True
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        tasks = data["tasks"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable prompt config ({e}); re-save the model with neko") from None
    try:
        return TaskRegistry.from_list(tasks), bool(data.get("use_chat_template", True))
    except ValueError as e:  # a task the file defines is refused: say which and why, not "unreadable"
        raise ValueError(f"{path}: {e}; fix that task in the file") from None
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable prompt config ({e}); re-save the model with neko") from None
