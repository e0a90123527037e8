"""``correct_file``: a whole input file -> prediction rows, resumable after a crash or kill.

Design choices:
- Output rows are neko rows plus ``prediction`` (what ``neko eval --pred`` scores: the task policy's
  choice), ``decision`` (mode, what was used and why, see :mod:`neko.infer.policy`),
  ``prediction_generated`` / ``prediction_rescored`` / ``prediction_constrained`` (the raw
  generation, the N-best rescoring's choice and the raw N-best-constrained generation, when they ran), ``error`` (why an item failed; its ``prediction`` is then the 1-best, so a
  scored file never silently loses rows) and optional ``details``.
- Durability: each finished batch is appended to ``<output>.partial`` as whole lines and fsynced.
  A torn last line (kill mid-write) is cut off on resume; finished ids are skipped. The final file is
  written in input order with an atomic rename, so ``<output>`` is either absent or complete.
- ``<output>.partial.json`` fingerprints the input file, model and options; resuming with different
  ones is refused (pass ``overwrite=True`` to start over) so one output never mixes two runs.
- Rows that do not fit the schema are listed with their reason in ``<output>.errors.jsonl``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from neko.data.formats import read_any
from neko.infer.correct import Corrector
from neko.infer.items import CorrectionResult, PreparedItem
from neko.infer.options import CorrectionOptions
from neko.io import (
    OutputError,
    atomic_write_json,
    atomic_write_text,
    check_not_input,
    exclusive_lock,
    os_error_message,
)
from neko.model.experts import expert_usage_by_task
from neko.schema import Example, SchemaError, read_jsonl
from neko.tasks import TaskRegistry, load_prompt_config

__all__ = ["correct_file", "read_input", "prediction_row"]


def read_input(
    path: str | Path,
    *,
    task: str | None = None,
    format: str | None = None,
    errors: list[SchemaError] | None = None,
    registry: TaskRegistry | None = None,
) -> tuple[list[Example], int]:
    """(rows, number of skipped invalid rows) of any supported format; bad rows go to ``errors``.

    neko JSONL is read here (``task`` is the default for rows without one); every other format goes
    through ``neko.data.formats.read_any`` (``task`` is then set on every row).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: input file not found; check the path")
    is_jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    if format in ("neko", "jsonl") or (format is None and is_jsonl and _looks_like_neko(path)):
        errs: list[SchemaError] = []
        rows = read_jsonl(path, default_task=task, skip_invalid=True, errors=errs)
        if errors is not None:
            errors.extend(_for_correct(e) for e in errs)
        return rows, len(errs)
    rows, report = read_any(path, format=format, task=task, skip_invalid=True, registry=registry)
    if errors is not None:
        errors.extend(_for_correct(e) for e in report.errors)
    return rows, report.skipped


_CONVERT_HINT = "--truncate-chars N"


def _for_correct(e: SchemaError) -> SchemaError:
    """The schema's advice names `neko data convert`'s --truncate-chars, which `correct` does not
    have (issue 23.9): point at the command that has it."""
    if _CONVERT_HINT not in e.reason:
        return e
    reason = e.reason.replace(_CONVERT_HINT, f"`neko data convert {_CONVERT_HINT}` before correcting")
    return SchemaError(reason, path=e.path, line=e.line, field=e.field, kind=e.kind)


def _looks_like_neko(path: Path) -> bool:
    """A JSONL file whose first row has neko's ``input`` field (other JSONL formats go to read_any)."""
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                try:
                    row = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return True  # let read_jsonl report the bad line
                return isinstance(row, dict) and "input" in row
    return True


def prediction_row(ex: Example, res: CorrectionResult, *, details: bool = False) -> dict[str, Any]:
    row = ex.to_dict()
    one_best = ex.one_best
    row["prediction"] = res.text if res.ok else one_best
    if res.ok and res.decision is not None:
        row["decision"] = res.decision
    if res.ok and res.generated is not None:
        row["prediction_generated"] = res.generated
    if res.ok and res.rescored is not None:
        row["prediction_rescored"] = res.rescored
    if res.ok and getattr(res, "constrained", None) is not None:
        row["prediction_constrained"] = res.constrained
    if res.error is not None:
        row["error"] = res.error
    if details and res.details is not None:
        row["details"] = res.details
    if details and res.scores is not None:
        row.setdefault("details", {})["scores"] = dataclasses.asdict(res.scores)
    return row


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def _readable_once(input: Path, format: str | None) -> Iterator[Path]:
    """A regular file to read ``input``'s rows from, and to fingerprint.

    A pipe, FIFO or device (``--input /dev/stdin``) can be read only once: hashing it after the rows
    were read hashed nothing, so every piped input had the same fingerprint and a resume mixed two
    inputs' rows. Such an input is copied once into a private temporary file, which is both parsed
    and hashed, so the fingerprint is that of exactly the bytes the rows came from."""
    try:
        regular = stat.S_ISREG(input.stat().st_mode)
    except OSError:
        regular = True  # missing or unreadable: read_input names the problem
    if not regular and format is None:  # refused before the pipe is drained
        raise ValueError(
            f"{input}: a pipe or device has no file name to tell its format; pass --format "
            "(e.g. --format neko for neko JSONL)"
        )
    if regular:
        yield input
        return
    with tempfile.TemporaryDirectory(prefix="neko-input-") as tmp:
        snapshot = Path(tmp) / (input.name or "input")
        with input.open("rb") as src, snapshot.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        yield snapshot


def _fingerprint(
    input_hash: str | Path, model_dir: Path, task: str | None, options: CorrectionOptions, extra: Any
) -> str:
    h = hashlib.sha256()
    h.update(_hash_file(input_hash).encode() if isinstance(input_hash, Path) else input_hash.encode())
    # Batch size and sort order do not change greedy outputs (tested), so a resumed run may change them.
    options = dataclasses.replace(options, batch_size=1, sort_by_length=True)
    # A re-tuned policy changes what rows get, so it is part of the run's identity.
    policy = model_dir / "neko_policy.json"
    tuned = hashlib.sha256(policy.read_bytes()).hexdigest() if policy.is_file() else None
    meta = [str(model_dir.resolve()), task, repr(options), repr(extra), tuned]
    h.update(json.dumps(meta).encode())
    return h.hexdigest()


def _create_private(path: Path, mode: int | None) -> None:
    """Create ``path`` if absent and give it ``mode`` (the output's), before anything is written to it.
    ``mode`` None: a new output, whose files take the umask's permissions like any new file."""
    if mode is None:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _load_partial(partial: Path) -> dict[str, str]:
    """id -> line of every complete row in the partial file; a torn trailing line is cut off."""
    data = partial.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        os.truncate(partial, end)
    done: dict[str, str] = {}
    for lineno, raw in enumerate(data[:end].split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            rid = row["id"]
        except (ValueError, KeyError, TypeError) as e:  # UnicodeDecodeError and JSONDecodeError too
            reason = f"no {e}" if isinstance(e, KeyError) else type(e).__name__
            raise ValueError(
                f"{partial}:{lineno}: not a row written by `neko correct` ({reason}); "
                "delete the file or pass --overwrite to start over"
            ) from None
        done[str(rid)] = raw.decode("utf-8")
    return done


def _partial_matches(meta_path: Path, fingerprint: str) -> bool:
    try:
        return json.loads(meta_path.read_text(encoding="utf-8")).get("fingerprint") == fingerprint
    except (OSError, ValueError, AttributeError):  # absent, damaged or not an object: not this run's
        return False


def correct_file(
    model_dir: str | Path,
    input: str | Path,
    output: str | Path,
    *,
    task: str | None = None,
    format: str | None = None,
    options: CorrectionOptions | None = None,
    fewshot: Any = None,
    details: bool = False,
    max_rows: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    corrector: Corrector | None = None,
    all_outputs: bool = False,
    constrained: bool = False,
) -> dict[str, Any]:
    """Correct every row of ``input`` into prediction rows at ``output`` (JSONL); returns a summary.

    ``all_outputs``: also generate and rescore rows whose policy does not need it (evaluation and
    policy tuning compare all of them; see :meth:`Corrector.run`). ``constrained``: also decode the
    N-best rows whose hypotheses do not agree with the N-best-constrained generation (policy tuning).

    Resumes from ``<output>.partial`` when a previous run with the same input, model and options was
    interrupted. ``corrector`` reuses an already loaded :class:`Corrector` (then ``options`` is its own).
    A second run writing the same output at the same time is refused (``<output>.lock``).
    """
    t0 = time.perf_counter()
    model_dir, input, output = Path(model_dir), Path(input), Path(output)
    options = corrector.options if corrector is not None else (options or CorrectionOptions())
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be a positive number of rows, got {max_rows}")
    if output.is_dir():
        raise ValueError(f"{output}: is a directory; --output takes a file path (JSONL)")
    # Side files and the lock belong to the file really written: two runs writing one file through
    # different links must meet on one lock (issue 23.4), and a link's directory may not be the target's.
    target = Path(os.path.realpath(output))
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        mode = stat.S_IFREG
    device = stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)  # /dev/null, a FIFO: written through
    if not (device or stat.S_ISREG(mode)):  # refused now, not after every row was corrected
        raise ValueError(f"{output}: is not a regular file, a character device or a FIFO; choose a file path")
    # A device cannot be resumed into and its directory (/dev) is often not writable: its side files
    # live in a private temporary directory, removed at the end; nothing else writes it, so no lock.
    side_tmp = tempfile.TemporaryDirectory(prefix="neko-correct-") if device else contextlib.nullcontext()
    with side_tmp as tmp_dir:
        return _correct_file(
            model_dir,
            input,
            output,
            target,
            Path(tmp_dir) if device else None,
            task=task,
            format=format,
            options=options,
            fewshot=fewshot,
            details=details,
            max_rows=max_rows,
            overwrite=overwrite,
            progress=progress,
            corrector=corrector,
            all_outputs=all_outputs,
            constrained=constrained,
            t0=t0,
        )


@dataclass(frozen=True)
class _SideFiles:
    """What a run keeps beside the file it really writes (or in a private folder, for a device)."""

    partial: Path  # finished rows, appended and fsynced: what a rerun resumes from
    meta: Path  # the run's fingerprint
    errors: Path  # the rows that do not fit the schema
    lock: Path

    @classmethod
    def beside(cls, target: Path, side_dir: Path | None) -> _SideFiles:
        base = (side_dir or target.parent) / target.name
        return cls(
            *(base.with_name(base.name + k) for k in (".partial", ".partial.json", ".errors.jsonl", ".lock"))
        )


def _correct_file(
    model_dir: Path,
    input: Path,
    output: Path,
    target: Path,
    side_dir: Path | None,
    *,
    task: str | None,
    format: str | None,
    options: CorrectionOptions,
    fewshot: Any,
    details: bool,
    max_rows: int | None,
    overwrite: bool,
    progress: bool,
    corrector: Corrector | None,
    all_outputs: bool,
    constrained: bool,
    t0: float,
) -> dict[str, Any]:
    sides = _SideFiles.beside(target, side_dir)
    for path in (output, sides.partial, sides.meta, sides.errors):
        check_not_input(path, input)
    bad: list[SchemaError] = []
    registry = corrector.registry if corrector is not None else load_prompt_config(model_dir)[0]
    examples, n_bad, input_hash = _read_rows(input, task, format, registry, bad)
    examples = _rows_to_correct(input, examples, max_rows, n_bad, bad)
    lock, out_mode = _claim_output(output, target, sides, side_dir)
    with lock:
        extra = (max_rows, details, format, all_outputs) + ((constrained,) if constrained else ())
        fp = _fingerprint(input_hash, model_dir, task, options, extra)
        done = _start_or_resume(sides, fp, overwrite, out_mode, input, model_dir)
        todo = [ex for ex in examples if ex.id not in done]
        summary: dict[str, Any] = {
            "rows": len(examples),
            "resumed": len(examples) - len(todo),
            "invalid_rows": n_bad,
            "errors": 0,
            "used": {},
        }
        if todo:
            corrector = corrector or _load_corrector(model_dir, options, sides)
            if progress:  # after the input checks, so a refused run's error stays its one line
                print(corrector.precision.describe(), file=sys.stderr)
            _correct_rows(
                corrector,
                todo,
                sides,
                task,
                fewshot,
                details,
                progress,
                summary["resumed"],
                all_outputs,
                constrained,
            )
            done = _load_partial(sides.partial)
        summary_counts(done, summary)
        if corrector is not None:
            summary["precision"] = corrector.precision.name
        if details:
            summary["experts_by_task"] = expert_usage_by_task(json.loads(line) for line in done.values())
        keep_bad = bool(n_bad) and side_dir is None  # beside a device there is nowhere to keep them
        _write_results(output, examples, done, sides, bad if keep_bad else None, out_mode)
    summary.update(output=str(output), seconds=round(time.perf_counter() - t0, 3))
    if n_bad and side_dir is None:
        summary["errors_file"] = str(sides.errors)
    return summary


def _read_rows(
    input: Path, task: str | None, format: str | None, registry: TaskRegistry, bad: list[SchemaError]
) -> tuple[list[Example], int, str]:
    """(rows, invalid rows, hash of the bytes the rows came from); the invalid rows go to ``bad``."""
    with _readable_once(input, format) as readable:
        before = _file_identity(readable)
        try:
            examples, n_bad = read_input(readable, task=task, format=format, errors=bad, registry=registry)
        except ValueError as e:
            if readable == input or type(e) is not ValueError:
                raise
            raise ValueError(str(e).replace(str(readable), str(input))) from None
        # the hash of exactly the bytes the rows came from (a pipe's snapshot, not the drained pipe)
        input_hash = _hash_file(readable)
        if _file_identity(readable) != before:
            raise ValueError(f"{input}: changed while it was being read; run again once it is complete")
    return examples, n_bad, input_hash


def _rows_to_correct(
    input: Path, examples: list[Example], max_rows: int | None, n_bad: int, bad: list[SchemaError]
) -> list[Example]:
    """The first ``max_rows`` rows; refused when there are none, or when two share an id."""
    if max_rows is not None:
        examples = examples[:max_rows]
    if not examples:
        why = f"all {n_bad} rows are invalid, the first: {bad[0]}" if bad else "the file holds no rows"
        raise ValueError(f"{input}: nothing to correct ({why})")
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise ValueError(f"{input}: duplicate id {ex.id!r}; ids must be unique so a run can resume by id")
        seen.add(ex.id)
    return examples


def _claim_output(
    output: Path, target: Path, sides: _SideFiles, side_dir: Path | None
) -> tuple[contextlib.AbstractContextManager, int | None]:
    """(the lock a run holds on its output, the permissions its side files take). A device's side
    files live in a private folder nothing else writes: no lock, and the umask's permissions."""
    busy = (
        f"{output}: another `neko correct` is writing this output right now; wait for it to finish "
        "or choose another --output"
    )
    if side_dir is None:
        target.parent.mkdir(parents=True, exist_ok=True)  # as `neko eval` does: a new directory is made
    lock = exclusive_lock(sides.lock, busy) if side_dir is None else contextlib.nullcontext()
    # Side files hold the output's rows (or what they came from), so they get the output's own
    # permissions: a 0600 output's rows were readable by all in a 0644 .partial (issue 23.8).
    try:
        out_mode = stat.S_IMODE(target.stat().st_mode) if side_dir is None else None
    except FileNotFoundError:
        out_mode = None
    return lock, out_mode


def _start_or_resume(
    sides: _SideFiles, fingerprint: str, overwrite: bool, out_mode: int | None, input: Path, model_dir: Path
) -> dict[str, str]:
    """The rows an interrupted run of this same job finished (id -> line); none for a fresh start."""
    if sides.partial.exists() and not overwrite:
        if not _partial_matches(sides.meta, fingerprint):
            raise ValueError(
                f"{sides.partial} is from a run with a different input, model or options; "
                "delete it or pass --overwrite to start over"
            )
        _create_private(sides.partial, out_mode)  # an older run's partial may be more open than its output
        return _load_partial(sides.partial)
    sides.partial.unlink(missing_ok=True)
    _create_private(sides.meta, out_mode)  # the atomic write keeps an existing file's mode
    atomic_write_json(sides.meta, {"fingerprint": fingerprint, "input": str(input), "model": str(model_dir)})
    _create_private(sides.partial, out_mode)  # before a single row is in it
    return {}


@contextlib.contextmanager
def _cleaned_up_on_failure(sides: _SideFiles) -> Iterator[None]:
    """A partial file with finished rows stays (the rerun resumes from it); without any it holds no
    work, and its sidecar would only outlive the failed run."""
    try:
        yield
    except BaseException:
        if not (sides.partial.exists() and sides.partial.stat().st_size > 0):
            sides.partial.unlink(missing_ok=True)
            sides.meta.unlink(missing_ok=True)
        raise


def _load_corrector(model_dir: Path, options: CorrectionOptions, sides: _SideFiles) -> Corrector:
    with _cleaned_up_on_failure(sides):
        return Corrector.from_pretrained(model_dir, options)


def _correct_rows(
    corrector: Corrector,
    todo: list[Example],
    sides: _SideFiles,
    task: str | None,
    fewshot: Any,
    details: bool,
    progress: bool,
    resumed: int,
    all_outputs: bool,
    constrained: bool,
) -> None:
    """Correct ``todo`` into the partial file, longest prompts first when the options sort."""
    with _cleaned_up_on_failure(sides):
        prepared = [corrector.prepare(ex, task=task, fewshot=fewshot) for ex in todo]
        order = list(range(len(todo)))
        if corrector.options.sort_by_length:
            order.sort(key=lambda i: -len(prepared[i].input_ids or ()))
        _run_batches(
            corrector,
            todo,
            prepared,
            order,
            sides.partial,
            details,
            progress,
            resumed,
            all_outputs,
            constrained,
        )


def _write_results(
    output: Path,
    examples: list[Example],
    done: dict[str, str],
    sides: _SideFiles,
    bad: list[SchemaError] | None,
    out_mode: int | None,
) -> None:
    """The output in input order (atomically), the invalid rows' file (``bad``; None = no file),
    and the run's side files gone."""
    text = "".join(done[ex.id] + "\n" for ex in examples if ex.id in done)
    atomic_write_text(output, text)
    if bad is not None:
        _create_private(sides.errors, out_mode)
        atomic_write_text(
            sides.errors,
            "".join(json.dumps({"error": str(e), "line": e.line, "field": e.field}) + "\n" for e in bad),
        )
    else:
        sides.errors.unlink(missing_ok=True)
    sides.partial.unlink(missing_ok=True)
    sides.meta.unlink(missing_ok=True)


def summary_counts(done: dict[str, str], summary: dict[str, Any]) -> None:
    for line in done.values():
        row = json.loads(line)
        summary["errors"] += "error" in row
        if "decision" in row:
            used = row["decision"]["used"]
            summary["used"][used] = summary["used"].get(used, 0) + 1


def _run_batches(
    corrector: Corrector,
    todo: list[Example],
    prepared: list[PreparedItem],
    order: list[int],
    partial: Path,
    details: bool,
    progress: bool,
    resumed: int,
    all_outputs: bool = False,
    constrained: bool = False,
) -> None:
    bs = corrector.options.batch_size
    columns = (TextColumn("correcting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # Unbuffered: a failed write must fail here, not again when the file is closed.
    with (
        Progress(*columns, disable=not progress, transient=False) as bar,
        partial.open("ab", buffering=0) as fh,
    ):
        job = bar.add_task("correct", total=len(order) + resumed, completed=resumed)
        # The corrector re-sorts inside run(); we keep its batch equal to ours so each run() is one batch.
        one_batch = dataclasses.replace(corrector.options, sort_by_length=False)
        saved, corrector.options = corrector.options, one_batch
        try:
            for start in range(0, len(order), bs):
                idx = order[start : start + bs]
                results = corrector.run(
                    [prepared[i] for i in idx],
                    details=details,
                    all_outputs=all_outputs,
                    constrained=constrained,
                )
                lines = []
                for i, res in zip(idx, results, strict=True):
                    row = prediction_row(todo[i], res, details=details)
                    lines.append(json.dumps(row, ensure_ascii=False) + "\n")
                _append(fh, "".join(lines).encode("utf-8"), partial)
                bar.advance(job, len(idx))
        finally:
            corrector.options = saved


def _append(fh: BinaryIO, data: bytes, partial: Path) -> None:
    """Append whole rows and fsync; a full disk is one error (the rows before stay for the resume)."""
    view = memoryview(data)
    try:
        while view:
            view = view[fh.write(view) :]
        os.fsync(fh.fileno())
    except OSError as e:
        raise OutputError(
            f"cannot write {os_error_message(e, partial)}; rows finished before are kept there and "
            "the same command resumes from them"
        ) from None
