"""Record sources: the records of a JSON array, JSONL, CSV or Parquet file, each with its line.

Each source yields ``(line, record)`` or ``(line, SchemaError)`` for a record that could not be
parsed, so the driver (:func:`neko.data.readers.base.run_reader`) decides between raising and
skipping. Line numbers are those a text editor shows (a CSV row spanning lines gets its first line;
Parquet rows get their 1-based row number). Non-UTF-8 bytes in a JSON array or CSV file are decoded
with ``surrogateescape`` so that one bad byte costs one row; JSONL is decoded line by line.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from neko.schema import MAX_TEXT_CHARS, SchemaError, decode_line, parse_json_line

__all__ = [
    "Container",
    "Record",
    "check_file",
    "is_json_array_document",
    "is_parquet",
    "iter_csv_records",
    "iter_json_array",
    "iter_json_records",
    "iter_parquet_records",
    "iter_records",
]

Container = Literal["json", "csv", "parquet"]
# Records are (line number, record) or (line number, SchemaError) for rows that could not be parsed.
Record = tuple[int, Any]


def check_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise FileNotFoundError(f"{path}: is a directory, expected a data file")
    return path


PARQUET_MAGIC = b"PAR1"


def is_parquet(path: Path) -> bool:
    """A Parquet file, by extension or by its magic bytes (hub downloads are sometimes renamed).

    Parquet files start *and* end with ``PAR1``; a text file whose first line happens to start with
    those letters does not also end with them (text ends with a newline or text)."""
    if path.suffix.lower() == ".parquet":
        return True
    n = len(PARQUET_MAGIC)
    with path.open("rb") as fh:
        head = fh.read(n)
        if head != PARQUET_MAGIC or fh.seek(0, 2) < 3 * n:
            return False
        fh.seek(-n, 2)
        return fh.read(n) == PARQUET_MAGIC


class _Lines:
    """Line number of a position, counted incrementally (positions only move forward), so numbering
    every element of a 100k-element array stays linear instead of rescanning the text each time."""

    def __init__(self, text: str) -> None:
        self.text, self.pos, self.line = text, 0, 1

    def __call__(self, pos: int) -> int:
        if pos < self.pos:
            return self.text.count("\n", 0, pos) + 1
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


_ELEMENT_START = re.compile(r"\n[ \t\r]*[{\[]")
_WS = re.compile(r"[ \t\r\n]*")


def _element_start(text: str, first: int) -> re.Pattern[str]:
    """Where a new element may start: a line indented like the first element (so resyncing after a
    damaged element skips nested ``{``/``[`` lines of a pretty-printed file), else any line."""
    nl = text.rfind("\n", 0, first)
    indent = text[nl + 1 : first] if nl >= 0 else None
    if indent is None or indent.strip(" \t"):
        return _ELEMENT_START
    return re.compile("\n" + re.escape(indent) + r"[{\[]")


def iter_json_array(text: str, path: str, *, limit: int | None = None) -> Iterator[Record]:
    """Elements of a JSON array document with the line each starts on.

    A syntax error inside one element is reported for that element's line; the scan then resumes at
    the next line that starts with ``{`` or ``[`` at the first element's indentation (released files
    are pretty-printed one element per line or block), so ``--skip-invalid`` can step over a damaged
    element instead of losing the file.
    """
    dec = json.JSONDecoder()
    line_of = _Lines(text)
    pos = _WS.match(text, 0).end()
    if not text.startswith("[", pos):
        yield (
            line_of(pos),
            SchemaError("expected a JSON array", path=path, line=1, kind="malformed-json"),
        )
        return
    pos = _WS.match(text, pos + 1).end()
    if text.startswith("]", pos):
        return
    element_start = _element_start(text, pos)
    n = 0
    while pos < len(text):
        start = pos
        try:
            obj, pos = dec.raw_decode(text, pos)
        except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; so is a 5000-digit int
            msg = e.msg if isinstance(e, json.JSONDecodeError) else (str(e) or "nested too deeply")
            line = line_of(getattr(e, "pos", start))
            yield line, SchemaError(f"malformed JSON ({msg})", path=path, line=line, kind="malformed-json")
            nxt = element_start.search(text, start + 1)
            if nxt is None:
                return
            pos = nxt.end() - 1
            continue
        yield line_of(start), obj
        n += 1
        if limit is not None and n >= limit:
            return
        pos = _WS.match(text, pos).end()
        if text.startswith(",", pos):
            pos = _WS.match(text, pos + 1).end()
        elif text.startswith("]", pos):
            end = _WS.match(text, pos + 1).end()
            if end < len(text):
                line = line_of(end)
                yield (
                    line,
                    SchemaError(
                        "extra data after the closing ']' of the JSON array; one array per file, or use JSONL",
                        path=path,
                        line=line,
                        kind="malformed-json",
                    ),
                )
            return
        else:
            line = line_of(pos)
            yield (
                line,
                SchemaError(
                    "malformed JSON (expected ',' or ']' between array elements)",
                    path=path,
                    line=line,
                    kind="malformed-json",
                ),
            )
            nxt = element_start.search(text, pos)
            if nxt is None:
                return
            pos = nxt.end() - 1
    if limit is None:
        yield (
            line_of(len(text)),
            SchemaError(
                "malformed JSON (the array is not closed with ']'; truncated file?)",
                path=path,
                line=line_of(len(text)),
                kind="malformed-json",
            ),
        )


def is_json_array_document(path: Path) -> bool:
    """Is this a JSON array document (else JSONL)?

    Starts with ``[`` and is not a JSONL file whose first line happens to be a list: a first line
    that parses on its own *and* is followed by more lines means JSONL. A one-line array is an array.
    """
    with path.open("rb") as fh:
        first = b""
        for raw in fh:
            if raw.strip():
                first = raw
                break
        first = first.removeprefix(b"\xef\xbb\xbf")
        if not first.lstrip().startswith(b"["):
            return False
        more = any(raw.strip() for raw in _take(fh, 1000))
    if not more:
        return True
    try:
        json.loads(first.decode("utf-8", errors="surrogateescape"))
    except (ValueError, RecursionError):
        return True
    return False


def _take(it: Any, n: int) -> Iterator[Any]:
    for i, x in enumerate(it):
        if i >= n:
            return
        yield x


def iter_json_records(path: Path, *, limit: int | None = None) -> Iterator[Record]:
    """Records of a JSON-array or JSONL file (see :func:`is_json_array_document`)."""
    spath = str(path)
    if is_json_array_document(path):
        # Non-UTF-8 bytes become lone surrogates, so one bad byte costs one row, not the file;
        # example_from_dict rejects any field that still holds one.
        text = path.read_bytes().removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="surrogateescape")
        yield from iter_json_array(text, spath, limit=limit)
        return
    n = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                text = decode_line(raw, path=spath, line=lineno)
                if not text.strip():
                    continue
                yield lineno, parse_json_line(text, path=spath, line=lineno)
            except SchemaError as err:
                if n == 0 and err.kind == "malformed-json" and raw.strip() == b"{":
                    err = SchemaError(
                        f"{err.reason}; the file looks like one pretty-printed JSON object, but readers take a "
                        "JSON array or JSONL (one object per line): extract the list of rows first",
                        path=spath,
                        line=lineno,
                        kind=err.kind,
                    )
                yield lineno, err
            n += 1
            if limit is not None and n >= limit:
                return


def _csv_lines(path: Path) -> Iterator[str]:
    spath = str(path)
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                yield decode_line(raw, path=spath, line=lineno)
            except SchemaError:
                # Keep the line count right; the row is rejected by example_from_dict (surrogates).
                yield raw.decode("utf-8", errors="surrogateescape")


def iter_csv_records(path: Path, *, limit: int | None = None) -> Iterator[Record]:
    """Rows of a CSV file with a header, as dicts, with the line each row starts on."""
    spath = str(path)
    csv.field_size_limit(max(csv.field_size_limit(), 4 * MAX_TEXT_CHARS))
    reader = csv.reader(_csv_lines(path))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        yield 1, SchemaError(f"malformed CSV header ({e})", path=spath, line=1, kind="malformed-csv")
        return
    header = [h.strip() for h in header]
    n = 0
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield start, SchemaError(f"malformed CSV ({e})", path=spath, line=start, kind="malformed-csv")
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            yield (
                line,
                SchemaError(
                    f"expected {len(header)} columns ({', '.join(header)}), got {len(row)}; quote fields that "
                    "contain commas",
                    path=spath,
                    line=line,
                    kind="malformed-csv",
                ),
            )
        else:
            yield line, dict(zip(header, row, strict=True))
        n += 1
        if limit is not None and n >= limit:
            return


def iter_parquet_records(path: Path, *, limit: int | None = None) -> Iterator[Record]:
    """Rows of a Parquet file (row number as "line"), read batch by batch."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a non-Parquet file
        raise SchemaError(
            f"not a readable Parquet file ({e})", path=str(path), kind="malformed-parquet"
        ) from None
    n = 0
    batches = pf.iter_batches(batch_size=1024)
    while True:
        try:
            batch = next(batches, None)
        except Exception as e:  # a damaged row group: report it, keep the rows read so far
            yield (
                n + 1,
                SchemaError(
                    f"damaged Parquet data after row {n} ({e})",
                    path=str(path),
                    line=n + 1,
                    kind="malformed-parquet",
                ),
            )
            return
        if batch is None:
            return
        for row in batch.to_pylist():
            n += 1
            yield n, row
            if limit is not None and n >= limit:
                return


def iter_records(path: Path, container: Container, *, limit: int | None = None) -> Iterator[Record]:
    if container == "json":
        return iter_json_records(path, limit=limit)
    if container == "csv":
        return iter_csv_records(path, limit=limit)
    return iter_parquet_records(path, limit=limit)
