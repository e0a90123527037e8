"""Reading what ``neko eval`` scores: prediction files, optionally joined with a reference file by id.

A prediction row is a neko row plus ``"prediction": str`` (what ``neko correct`` writes, along with
``prediction_unguarded``). Either the prediction file carries the references itself (``output``),
or ``--ref R`` supplies them: then a prediction row needs only ``id`` and its prediction field(s),
and ids must match one to one (a missing, extra or duplicated id is an error that names the file
and the ids, never a silent partial score). Several prediction files are joined the same way.

Systems: each (file, field) pair is one system. With one file the systems are named by their
field (``prediction``, ``prediction_unguarded``); with several files by the file (``NAME=PATH``
or the file's stem), suffixed ``:field`` when several fields are scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from neko.data.formats import read_any
from neko.data.readers.base import has_surrogate_escape
from neko.schema import Example, SchemaError, example_from_dict, parse_json_line
from neko.tasks import TaskRegistry

__all__ = ["ScoredRow", "load_predictions", "parse_system_arg", "read_prediction_file", "DEFAULT_FIELDS"]

DEFAULT_FIELDS = ("prediction",)


@dataclass
class ScoredRow:
    """One example and the text each system produced for it (system name -> text)."""

    example: Example
    predictions: dict[str, str] = field(default_factory=dict)


def parse_system_arg(arg: str) -> tuple[str | None, Path]:
    """``NAME=PATH`` -> (NAME, PATH); a plain ``PATH`` -> (None, PATH)."""
    if "=" in arg and not Path(arg).exists():
        name, _, path = arg.partition("=")
        if not name.strip() or not path.strip():
            raise ValueError(f"--pred {arg!r}: expected NAME=PATH or PATH")
        return name.strip(), Path(path.strip())
    return None, Path(arg)


def _show(ids: Sequence[str], k: int = 5) -> str:
    ids = list(ids)
    more = f" (and {len(ids) - k} more)" if len(ids) > k else ""
    return ", ".join(repr(i) for i in ids[:k]) + more


def read_prediction_file(
    path: str | Path, *, need_reference: bool, fields: Sequence[str] = DEFAULT_FIELDS
) -> list[tuple[dict, int]]:
    """Raw JSON rows (with their line numbers) of a prediction file, each checked for its ``fields``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such prediction file; check the path")
    where = {"path": str(path)}
    rows: list[tuple[dict, int]] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SchemaError(
                    f"not UTF-8 (byte {e.start}); re-encode as UTF-8", **where, line=lineno
                ) from None
            if not text.strip():
                continue
            row = parse_json_line(text, path=str(path), line=lineno)
            if not isinstance(row, dict):
                raise SchemaError(f"expected a JSON object, got {type(row).__name__}", **where, line=lineno)
            for f in fields:
                if f not in row:
                    hint = (
                        "what `neko correct` writes"
                        if f in DEFAULT_FIELDS
                        else "choose fields with --systems"
                    )
                    raise SchemaError(f"missing; every row needs it ({hint})", **where, line=lineno, field=f)
                if not isinstance(row[f], str):
                    raise SchemaError(
                        f"expected a string, got {type(row[f]).__name__}", **where, line=lineno, field=f
                    )
            if need_reference and row.get("output") is None:
                raise SchemaError(
                    "missing reference; this file has no 'output' on this row: pass the references with --ref R",
                    **where,
                    line=lineno,
                    field="output",
                )
            if not need_reference and row.get("id") is None:
                raise SchemaError("missing; rows are matched by id", **where, line=lineno, field="id")
            rows.append((row, lineno))
    if not rows:
        raise ValueError(f"{path}: no prediction rows (empty file)")
    return rows


def _by_id(rows: list[tuple[dict, int]], path: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for row, lineno in rows:
        rid = str(row["id"])
        if rid in out:
            raise SchemaError(f"duplicate id {rid!r}", path=str(path), line=lineno, field="id")
        out[rid] = row
    return out


def _join(examples: list[Example], rows: dict[str, dict], path: Path, against: str) -> list[dict]:
    ids = [e.id for e in examples]
    missing = [i for i in ids if i not in rows]
    extra = sorted(set(rows) - set(ids))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} id(s) of {against} have no prediction in {path}: {_show(missing)}")
        if extra:
            parts.append(f"{len(extra)} id(s) in {path} are not in {against}: {_show(extra)}")
        raise ValueError("ids do not match: " + "; ".join(parts) + ". Score files made from the same input.")
    return [rows[i] for i in ids]


def _system_names(files: list[tuple[str | None, Path]], fields: Sequence[str]) -> list[list[str]]:
    names: list[list[str]] = []
    for given, path in files:
        label = given if given is not None else (path.stem if len(files) > 1 else None)
        if label is None:
            names.append(list(fields))
        elif len(fields) == 1:
            names.append([label])
        else:
            names.append([f"{label}:{f}" for f in fields])
    flat = [n for ns in names for n in ns]
    dup = sorted({n for n in flat if flat.count(n) > 1})
    if dup:
        raise ValueError(f"system name(s) {dup} used twice; name the files with NAME=PATH")
    return names


def load_predictions(
    preds: Sequence[str | Path | tuple[str | None, str | Path]],
    ref: str | Path | None = None,
    *,
    fields: Sequence[str] = DEFAULT_FIELDS,
    registry: TaskRegistry | None = None,
) -> list[ScoredRow]:
    """Rows to score, with one system per (prediction file, field); see the module docstring.

    ``preds``: paths, ``NAME=PATH`` strings or ``(name, path)`` pairs. Without ``ref`` the first
    file's rows are the examples and must carry ``output``; with ``ref`` the examples come from the
    reference file and every file is joined to it by id. ``ref`` may be in any supported format
    (a released HyPoradise JSON, a neko JSONL ...): it is read like ``neko correct`` reads its
    input, so rows without ids get the same ids there and here. ``registry``: the tasks its rows
    may use (built-ins by default).
    """
    if not preds:
        raise ValueError("no prediction file given; pass --pred P")
    fields = list(dict.fromkeys(fields))
    if not fields:
        raise ValueError("no prediction field to score; --systems needs at least one field name")
    files: list[tuple[str | None, Path]] = []
    for p in preds:
        files.append((p[0], Path(p[1])) if isinstance(p, tuple) else parse_system_arg(str(p)))
    names = _system_names(files, fields)

    first = 0
    if ref is not None:
        ref = Path(ref)
        examples, _ = read_any(ref, registry=registry)
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
        scored = [ScoredRow(e, {}) for e in examples]
        against = str(ref)
    else:
        path0 = files[0][1]
        rows0 = read_prediction_file(path0, need_reference=True, fields=fields)
        # lines are decoded strictly, so only a JSON escape can spell a lone surrogate
        check_utf8 = has_surrogate_escape(path0)
        examples = [
            example_from_dict(row, path=str(path0), line=lineno, check_utf8=check_utf8)
            for row, lineno in rows0
        ]
        first_line: dict[str, int] = {}
        for e, (_, lineno) in zip(examples, rows0, strict=True):
            if e.id in first_line:  # a row scored twice would weigh twice in every metric
                raise SchemaError(
                    f"duplicate id {e.id!r} (first on line {first_line[e.id]}); every row needs its own id",
                    path=str(path0),
                    line=lineno,
                    field="id",
                )
            first_line[e.id] = lineno
        scored = [
            ScoredRow(e, {n: row[f] for n, f in zip(names[0], fields, strict=True)})
            for e, (row, _) in zip(examples, rows0, strict=True)
        ]
        against = str(path0)
        first = 1

    for (_, path), sys_names in list(zip(files, names, strict=True))[first:]:
        rows = _join(
            examples,
            _by_id(read_prediction_file(path, need_reference=False, fields=fields), path),
            path,
            against,
        )
        for sr, row in zip(scored, rows, strict=True):
            for n, f in zip(sys_names, fields, strict=True):
                sr.predictions[n] = row[f]
    return scored
