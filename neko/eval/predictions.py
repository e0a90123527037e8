"""Reading what ``neko eval`` scores: prediction files, optionally joined with a reference file by id.

A prediction row is a neko row plus ``"prediction": str`` (what ``neko correct`` writes). Either
the prediction file carries the references itself (``output``), or ``--ref R`` supplies them:
then a prediction row needs only ``id`` and ``prediction``, and ids must match one to one (a
missing, extra or duplicated id is an error that names the file and the ids, never a silent
partial score). Several prediction files (systems) are joined the same way, by id.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from neko.data.schema import Example, SchemaError, example_from_dict, read_jsonl

__all__ = ["ScoredRow", "load_predictions", "parse_system_arg", "read_prediction_file"]


@dataclass
class ScoredRow:
    """One example and the text each system produced for it (system name -> text)."""

    example: Example
    predictions: dict[str, str] = field(default_factory=dict)


def parse_system_arg(arg: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (the name is then the file's stem)."""
    if "=" in arg and not Path(arg).exists():
        name, _, path = arg.partition("=")
        if not name.strip() or not path.strip():
            raise ValueError(f"--pred {arg!r}: expected NAME=PATH or PATH")
        return name.strip(), Path(path.strip())
    return Path(arg).stem, Path(arg)


def _show(ids: Sequence[str], k: int = 5) -> str:
    ids = list(ids)
    more = f" (and {len(ids) - k} more)" if len(ids) > k else ""
    return ", ".join(repr(i) for i in ids[:k]) + more


def read_prediction_file(path: str | Path, *, need_reference: bool) -> list[tuple[dict, int]]:
    """Raw JSON rows (with their line numbers) of a prediction file, each checked for ``prediction``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such prediction file; check the path")
    rows: list[tuple[dict, int]] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SchemaError(
                    f"not UTF-8 (byte {e.start}); re-encode as UTF-8", path=str(path), line=lineno
                ) from None
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise SchemaError(
                    f"malformed JSON ({e.msg} at column {e.colno})", path=str(path), line=lineno
                ) from None
            if not isinstance(row, dict):
                raise SchemaError(
                    f"expected a JSON object, got {type(row).__name__}", path=str(path), line=lineno
                )
            if "prediction" not in row:
                raise SchemaError(
                    "missing; a prediction file needs a 'prediction' on every row (what `neko correct` writes)",
                    path=str(path),
                    line=lineno,
                    field="prediction",
                )
            if not isinstance(row["prediction"], str):
                raise SchemaError(
                    f"expected a string, got {type(row['prediction']).__name__}",
                    path=str(path),
                    line=lineno,
                    field="prediction",
                )
            if need_reference and row.get("output") is None:
                raise SchemaError(
                    "missing reference; this file has no 'output' on this row: pass the references with --ref R",
                    path=str(path),
                    line=lineno,
                    field="output",
                )
            if not need_reference and row.get("id") is None:
                raise SchemaError(
                    "missing; rows are matched to --ref by id", path=str(path), line=lineno, field="id"
                )
            rows.append((row, lineno))
    if not rows:
        raise ValueError(f"{path}: no prediction rows (empty file)")
    return rows


def _by_id(rows: list[tuple[dict, int]], path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for row, lineno in rows:
        rid = row.get("id")
        if rid is None:
            raise SchemaError(
                "missing; rows of several files are matched by id", path=str(path), line=lineno, field="id"
            )
        rid = str(rid)
        if rid in out:
            raise SchemaError(f"duplicate id {rid!r}", path=str(path), line=lineno, field="id")
        out[rid] = row["prediction"]
    return out


def _join(examples: list[Example], preds: dict[str, str], path: Path, against: str) -> list[str]:
    ids = [e.id for e in examples]
    missing = [i for i in ids if i not in preds]
    extra = sorted(set(preds) - set(ids))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} id(s) of {against} have no prediction in {path}: {_show(missing)}")
        if extra:
            parts.append(f"{len(extra)} id(s) in {path} are not in {against}: {_show(extra)}")
        raise ValueError("ids do not match: " + "; ".join(parts) + ". Score files made from the same input.")
    return [preds[i] for i in ids]


def load_predictions(
    preds: Sequence[str | Path | tuple[str, str | Path]],
    ref: str | Path | None = None,
) -> list[ScoredRow]:
    """Rows to score: each prediction file is a system (``(name, path)`` or a path named by its stem).

    Without ``ref`` the first file's rows are the examples and must carry ``output``; with ``ref``
    the examples come from the reference file (a neko JSONL with ``output``) and every system is
    joined to it by id.
    """
    if not preds:
        raise ValueError("no prediction file given; pass --pred P")
    systems: list[tuple[str, Path]] = []
    for p in preds:
        name, path = (p[0], Path(p[1])) if isinstance(p, tuple) else parse_system_arg(str(p))
        if name in (n for n, _ in systems):
            raise ValueError(
                f"two prediction files are both named {name!r}; use NAME=PATH to tell them apart"
            )
        systems.append((name, path))

    if ref is not None:
        ref = Path(ref)
        examples = read_jsonl(ref)
        if not examples:
            raise ValueError(f"{ref}: no reference rows (empty file)")
        seen: set[str] = set()
        for e in examples:
            if e.id in seen:
                raise ValueError(f"{ref}: duplicate id {e.id!r}; ids must be unique to match predictions")
            seen.add(e.id)
            if e.output is None:
                raise ValueError(
                    f"{ref}: row id {e.id!r} has no 'output' (reference); a --ref file needs one on every row"
                )
        against = str(ref)
        first = 0
    else:
        name0, path0 = systems[0]
        rows0 = read_prediction_file(path0, need_reference=True)
        examples = []
        for row, lineno in rows0:
            examples.append(example_from_dict(row, path=str(path0), line=lineno))
        ids = [e.id for e in examples]
        if len(set(ids)) != len(ids) and len(systems) > 1:
            raise ValueError(f"{path0}: duplicate ids; several systems are matched by id")
        scored = [
            ScoredRow(e, {name0: row["prediction"]}) for e, (row, _) in zip(examples, rows0, strict=True)
        ]
        against = str(path0)
        first = 1

    if ref is not None:
        scored = [ScoredRow(e, {}) for e in examples]
    for name, path in systems[first:]:
        rows = read_prediction_file(path, need_reference=False)
        texts = _join(examples, _by_id(rows, path), path, against)
        for sr, t in zip(scored, texts, strict=True):
            sr.predictions[name] = t
    return scored
