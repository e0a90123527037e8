"""Input formats: a registry of readers, detection from content, and :func:`read_any`.

Detection reads only the head of a file (the first 1 MiB, at most 20 records): the container is
Parquet (its schema) for a ``.parquet`` name or Parquet magic bytes, CSV (its header) for ``.csv``,
anything else JSON array or JSONL by the first byte; then every reader's ``sniff`` votes on each
record's keys and the format with most votes wins (ties go to the earlier, more specific reader in
:data:`READERS`). A file
no reader recognizes is an error that lists the formats and the keys it saw; ``format=`` (``--format``)
skips detection entirely.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from neko.data.readers import (
    coedit,
    h2t_lora,
    hyporadise,
    hyporadise_csv,
    hyporadise_pilot,
    hypr,
    neko_jsonl,
    open_asr,
    pleias,
    translation,
)
from neko.data.readers.base import Reader, ReadReport, run_reader
from neko.data.readers.sources import (
    check_file,
    is_json_array_document,
    is_parquet,
    iter_csv_records,
    iter_json_array,
    iter_json_records,
)
from neko.io import check_not_input
from neko.schema import Example, SchemaError, write_jsonl
from neko.tasks import REGISTRY, TaskRegistry

__all__ = [
    "READERS",
    "FORMATS",
    "FormatError",
    "ReadReport",
    "convert_file",
    "describe_formats",
    "detect_format",
    "get_reader",
    "read_any",
]

# Order matters for ties: a neko row also has "input" like HyPoradise, so neko comes first.
READERS: dict[str, Reader] = {
    r.name: r
    for r in (
        neko_jsonl.READER,
        hyporadise.READER,
        hyporadise_csv.READER,
        h2t_lora.READER,
        hyporadise_pilot.READER,
        hypr.READER,
        open_asr.READER,
        coedit.READER,
        pleias.READER,
        translation.READER,
    )
}
FORMATS: tuple[str, ...] = tuple(READERS)
HEAD_BYTES = 1 << 20
HEAD_RECORDS = 20


class FormatError(SchemaError):
    """The format is unknown or could not be detected (a SchemaError, so one ``except`` covers all bad input)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="unknown-format")


def get_reader(name: str) -> Reader:
    try:
        return READERS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), READERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise FormatError(f"unknown format {name!r}.{hint} Known formats: {', '.join(READERS)}.") from None


def _head_records(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        for _, rec in iter_csv_records(path, limit=1):
            if isinstance(rec, dict):
                return [rec]
        # header only, or a bad first row: the header alone still names the columns
        with path.open("rb") as fh:
            first = fh.readline().decode("utf-8", errors="replace").lstrip("\ufeff")
        import csv

        try:
            header = next(csv.reader(first.splitlines()[:1]), [])
        except csv.Error:  # not CSV at all (e.g. a stray NUL): no columns, so detection says so
            header = []
        return [dict.fromkeys((h.strip() for h in header), "")]
    if is_parquet(path):
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
        except Exception as e:  # pyarrow raises several types for a non-Parquet file
            raise SchemaError(f"not a readable Parquet file ({e})", path=str(path)) from None
        return [dict.fromkeys(names, "")]
    if is_json_array_document(path):
        with path.open("rb") as fh:
            head = fh.read(HEAD_BYTES).removeprefix(b"\xef\xbb\xbf")
        text = head.decode("utf-8", errors="surrogateescape")
        recs = iter_json_array(text, str(path), limit=HEAD_RECORDS)
    else:
        recs = iter_json_records(path, limit=HEAD_RECORDS)
    return [r for _, r in recs if isinstance(r, dict)]


def detect_format(path: str | Path) -> str:
    """The reader name for ``path``, from its extension and the keys of its first records."""
    path = check_file(path)
    records = _head_records(path)
    votes: Counter[str] = Counter()
    for rec in records:
        for name, reader in READERS.items():
            if reader.sniff(rec):
                votes[name] += 1
                break
    if not votes:
        keys = sorted({k for r in records for k in r})[:20]
        seen = (
            f"keys seen: {', '.join(keys)}"
            if keys
            else (
                "no readable record in the first 1 MiB; expected JSONL, a JSON array, CSV with a header, or Parquet"
            )
        )
        raise FormatError(
            f"{path}: could not detect the format ({seen}); pass --format, one of: {', '.join(READERS)}"
        )
    best = max(votes.values())
    return next(name for name in READERS if votes[name] == best)


def read_any(
    path: str | Path,
    format: str | None = None,
    task: str | None = None,
    skip_invalid: bool = False,
    *,
    registry: TaskRegistry | None = None,
    truncate_chars: int | None = None,
    dedup: bool = False,
    top_n: int | None = None,
) -> tuple[list[Example], ReadReport]:
    """Read any supported file into neko :class:`Example` rows.

    format: a name from :data:`FORMATS`, or None to detect. task: force this task on every row
    (must be registered). skip_invalid: skip bad rows and count them in the report instead of
    raising on the first. registry: the task registry rows are checked against (built-ins by
    default; pass ``load_task_config(...)`` for user tasks). truncate_chars: cut single-text inputs
    and their references to this many characters (the paper's OCR protocol uses 1000).
    dedup: drop repeated hypotheses (first occurrence kept). top_n: keep the first N hypotheses of
    each N-best list (after ``dedup``), e.g. 5 of HypR's 50; per-hypothesis scores in ``meta`` are
    cut alike.
    """
    path = check_file(path)
    reg = registry if registry is not None else REGISTRY
    if truncate_chars is not None and truncate_chars <= 0:
        raise ValueError(f"truncate_chars must be a positive number of characters, got {truncate_chars}")
    if top_n is not None and top_n <= 0:
        raise ValueError(f"top_n must be a positive number of hypotheses, got {top_n}")
    if task is not None and task not in reg:
        try:
            reg.get(task)
        except KeyError as e:
            raise ValueError(f"--task: {e.args[0]}") from None
    reader = get_reader(format) if format is not None else get_reader(detect_format(path))
    kinds = {name: reg.get(name).input_kind for name in reg.names()}
    return run_reader(
        reader,
        path,
        task=task,
        known_tasks=frozenset(reg.names()),
        input_kinds=kinds,
        skip_invalid=skip_invalid,
        truncate_chars=truncate_chars,
        dedup=dedup,
        top_n=top_n,
    )


def describe_formats() -> Iterable[tuple[str, str]]:
    return [(r.name, r.description) for r in READERS.values()]


def convert_file(
    src: str | Path,
    dst: str | Path,
    *,
    format: str | None = None,
    task: str | None = None,
    skip_invalid: bool = False,
    registry: TaskRegistry | None = None,
    truncate_chars: int | None = None,
    dedup: bool = False,
    top_n: int | None = None,
) -> ReadReport:
    """Read ``src`` in any supported format and write it as neko JSONL to ``dst`` (atomically).

    Nothing is written when reading fails, so a bad input never leaves a partial output behind;
    ``dst`` may not be ``src`` (the input would be lost if the write failed half-way).
    """
    check_not_input(dst, src)

    examples, report = read_any(
        src,
        format=format,
        task=task,
        skip_invalid=skip_invalid,
        registry=registry,
        truncate_chars=truncate_chars,
        dedup=dedup,
        top_n=top_n,
    )
    write_jsonl(examples, dst)
    return report
