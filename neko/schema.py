"""The one neko row schema every reader maps into.

A neko JSONL row is::

    {"id": str, "task": str, "input": str | [str, ...], "output": str (absent at inference),
     "source_lang": str (optional), "target_lang": str (optional), "meta": {...} (optional)}

N-best policy (documented once, here; readers and prompts follow it, tests pin it):
- ``input`` as a list is an N-best list, best first: index 0 is the 1-best. Never reorder it. Readers
  of formats that carry an explicit rank (Open-ASR ``hypothesis_index``) sort by it; formats that carry
  a separate best hypothesis (H2T-LoRA ``input1``, HyPoradise CSV ``best_hypo``) put it at index 0.
- The uncorrected baseline (:attr:`Example.one_best`) is index 0 as stored, with ``<UNK>`` read as the
  empty string (HyPoradise wrote ``<UNK>`` where the recognizer produced nothing; some released files
  have it lower-cased, ``<unk>``, so the placeholder is matched case-insensitively: :func:`is_unk`).
  Never the last one.
- Empty hypotheses and HyPoradise's ``<UNK>`` placeholder are kept in place by the readers (they are
  what the recognizer said) but :func:`clean_nbest` drops them for prompting and voting.
- De-duplication: readers keep duplicates (a released list is converted as released; ``neko data
  convert --dedup`` opts in). Prompts keep duplicates too, because the paper's prompts (Figures 5-6)
  show them and agreement between hypotheses is signal. Voting and oracles call
  ``clean_nbest(dedup=True)``, which keeps the first occurrence, so the 1-best stays first.
- Padding: we never pad. HyPoradise padded short lists with random duplicates; prompts render the
  list as it is, so a 3-best list is shown as 3 items and its prompt says "3-best".
- An N-best list with no usable hypothesis (empty, or only empty / ``<UNK>`` items) is invalid input
  (:class:`SchemaError`, kind ``empty-nbest``).
- Whitespace inside a hypothesis is collapsed to single spaces by :func:`clean_nbest`.

Errors: every problem with a row is a :class:`SchemaError` whose message names the file, the line
and the field, and whose ``kind`` is a short category (``malformed-json``, ``wrong-type`` ...) that
``--skip-invalid`` reports count by.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neko.io import atomic_write_text

__all__ = [
    "Example",
    "SchemaError",
    "UNK",
    "MAX_TEXT_CHARS",
    "is_unk",
    "clean_nbest",
    "decode_line",
    "example_from_dict",
    "parse_json_line",
    "read_jsonl",
    "write_jsonl",
]

UNK = "<UNK>"
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_TEXT_CHARS = 100_000


def is_unk(hypothesis: str) -> bool:
    """Is this whole hypothesis HyPoradise's empty-output placeholder (``<UNK>``, any case, any padding)?"""
    return "<" in hypothesis and hypothesis.strip().upper() == UNK  # "<" first: most texts have none


class SchemaError(ValueError):
    """A row that does not fit the neko schema. The message names file, line and field."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
        kind: str = "invalid-row",
    ):
        self.path, self.line, self.field, self.kind = path, line, field, kind
        self.reason = message
        where = ":".join(str(p) for p in (path, line) if p is not None)
        prefix = f"{where}: " if where else ""
        fld = f"field '{field}': " if field else ""
        super().__init__(f"{prefix}{fld}{message}")


@dataclass
class Example:
    """One correction example. ``input`` is an N-best list (best first) or a single text."""

    id: str
    task: str
    input: str | list[str]
    output: str | None = None
    source_lang: str | None = None
    target_lang: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_nbest(self) -> bool:
        return isinstance(self.input, list)

    @property
    def hypotheses(self) -> list[str]:
        """The N-best list (a single text becomes a 1-item list)."""
        return list(self.input) if isinstance(self.input, list) else [self.input]

    @property
    def one_best(self) -> str:
        """The uncorrected baseline: hypothesis index 0 (never the last one)."""
        hyps = self.hypotheses
        if not hyps or is_unk(hyps[0]):
            return ""
        return hyps[0]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "task": self.task, "input": self.input}
        if self.output is not None:
            d["output"] = self.output
        if self.source_lang:
            d["source_lang"] = self.source_lang
        if self.target_lang:
            d["target_lang"] = self.target_lang
        if self.meta:
            d["meta"] = self.meta
        return d


def clean_nbest(hyps: Iterable[str], *, dedup: bool = True, drop_unk: bool = True) -> list[str]:
    """Strip whitespace, drop empty / ``<UNK>`` hypotheses, optionally de-duplicate; order kept."""
    out: list[str] = []
    seen: set[str] = set()
    for h in hyps:
        h = " ".join(h.split())
        if not h or (drop_unk and is_unk(h)):
            continue
        if dedup:
            if h in seen:
                continue
            seen.add(h)
        out.append(h)
    return out


def _check_text(value: Any, name: str, *, path: str | None, line: int | None) -> str:
    if not isinstance(value, str):
        raise SchemaError(
            f"expected a string, got {type(value).__name__}",
            path=path,
            line=line,
            field=name,
            kind="wrong-type",
        )
    if len(value) > MAX_TEXT_CHARS:
        raise SchemaError(
            f"text of {len(value)} characters exceeds the {MAX_TEXT_CHARS} limit; split it, or cut it with "
            "--truncate-chars N",
            path=path,
            line=line,
            field=name,
            kind="too-long",
        )
    return value


def example_from_dict(
    row: Any,
    *,
    path: str | None = None,
    line: int | None = None,
    default_task: str | None = None,
    known_tasks: Iterable[str] | None = None,
    check_utf8: bool = True,
) -> Example:
    """Validate one neko-schema dict and build an :class:`Example`.

    ``known_tasks``: when given, an unknown task is an error (with the list of known ones).
    ``check_utf8``: reject text holding lone surrogates (undecodable bytes read with
    ``surrogateescape``); readers that decoded strictly turn it off (it is a third of the row cost).
    """
    if not isinstance(row, dict):
        raise SchemaError(
            f"expected a JSON object, got {type(row).__name__}", path=path, line=line, kind="wrong-type"
        )
    task = row.get("task", default_task)
    if task is None:
        raise SchemaError(
            "missing; pass --task to set one for the whole file",
            path=path,
            line=line,
            field="task",
            kind="missing-field",
        )
    task = _check_text(task, "task", path=path, line=line).strip()
    if known_tasks is not None:
        known_set = known_tasks if isinstance(known_tasks, (set, frozenset)) else set(known_tasks)
        if task not in known_set:
            known = sorted(known_set)
            close = difflib.get_close_matches(task, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise SchemaError(
                f"unknown task {task!r}; {hint}known tasks: {', '.join(known)} (define new ones in a tasks config)",
                path=path,
                line=line,
                field="task",
                kind="unknown-task",
            )
    if "input" not in row:
        raise SchemaError("missing", path=path, line=line, field="input", kind="missing-field")
    raw = row["input"]
    inp: str | list[str]
    if isinstance(raw, list):
        hyps = [_check_text(h, f"input[{i}]", path=path, line=line) for i, h in enumerate(raw)]
        if not any(x.strip() and not is_unk(x) for x in hyps):
            raise SchemaError(
                "empty N-best list (no non-empty, non-<UNK> hypothesis)",
                path=path,
                line=line,
                field="input",
                kind="empty-nbest",
            )
        inp = hyps
    else:
        inp = _check_text(raw, "input", path=path, line=line)
        if not inp.strip():
            raise SchemaError("empty input text", path=path, line=line, field="input", kind="empty-text")
    out = row.get("output")
    if out is not None:
        out = _check_text(out, "output", path=path, line=line)
    rid = row.get("id", None)
    if rid is None:
        rid = f"{Path(path).stem if path else 'row'}-{line if line is not None else 0}"
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise SchemaError(
            f"expected a string, got {type(rid).__name__}",
            path=path,
            line=line,
            field="id",
            kind="wrong-type",
        )
    langs = {}
    for key in ("source_lang", "target_lang"):
        v = row.get(key)
        langs[key] = None if v is None else _check_text(v, key, path=path, line=line)
    meta = row.get("meta") or {}
    if not isinstance(meta, dict):
        raise SchemaError(
            f"expected an object, got {type(meta).__name__}",
            path=path,
            line=line,
            field="meta",
            kind="wrong-type",
        )
    for key, value in (("id", rid), ("input", inp), ("output", out), *langs.items(), ("meta", meta)):
        if check_utf8 and _has_surrogate(value):
            raise SchemaError(
                "not UTF-8 (undecodable bytes, or a lone surrogate escape such as \\ud800); "
                "re-encode the file as UTF-8",
                path=path,
                line=line,
                field=key,
                kind="not-utf8",
            )
    return Example(id=str(rid), task=task, input=inp, output=out, meta=meta, **langs)


def _has_surrogate(value: Any) -> bool:
    """True when text holds lone surrogates: what ``errors="surrogateescape"`` makes of non-UTF-8 bytes."""
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    if not isinstance(value, str) or value.isascii():
        return False
    return _SURROGATE.search(value) is not None


def decode_line(raw: bytes, *, path: str, line: int) -> str:
    """One line of a text file as UTF-8, or a SchemaError naming the file, line and byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SchemaError(
            f"not UTF-8 (byte {e.start}: {raw[e.start : e.start + 1]!r}); re-encode the file as UTF-8",
            path=path,
            line=line,
            kind="not-utf8",
        ) from None


def parse_json_line(text: str, *, path: str, line: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SchemaError(
            f"malformed JSON ({e.msg} at column {e.colno})", path=path, line=line, kind="malformed-json"
        ) from None
    except ValueError as e:  # e.g. an integer literal over Python's 4300-digit limit
        raise SchemaError(f"malformed JSON ({e})", path=path, line=line, kind="malformed-json") from None
    except RecursionError:
        raise SchemaError("JSON nested too deeply", path=path, line=line, kind="malformed-json") from None


def read_jsonl(
    path: str | Path,
    *,
    default_task: str | None = None,
    known_tasks: Iterable[str] | None = None,
    skip_invalid: bool = False,
    errors: list[SchemaError] | None = None,
) -> list[Example]:
    """Read a neko JSONL file. With ``skip_invalid`` bad rows are skipped and appended to ``errors``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise FileNotFoundError(f"{path}: is a directory, expected a JSONL file")
    known = list(known_tasks) if known_tasks is not None else None
    out: list[Example] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = decode_line(raw, path=str(path), line=lineno)
                if not text.strip():
                    continue
                row = parse_json_line(text, path=str(path), line=lineno)
                out.append(
                    example_from_dict(
                        row, path=str(path), line=lineno, default_task=default_task, known_tasks=known
                    )
                )
            except SchemaError as err:
                if not skip_invalid:
                    raise
                if errors is not None:
                    errors.append(err)
    return out


def write_jsonl(examples: Iterable[Example | dict[str, Any]], path: str | Path) -> int:
    """Write rows atomically (temp file + rename): a crash never leaves a half-written file."""
    lines = []
    for ex in examples:
        d = ex.to_dict() if isinstance(ex, Example) else ex
        lines.append(json.dumps(d, ensure_ascii=False))
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)
