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

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from neko.infer.correct import Corrector
from neko.infer.options import CorrectionOptions
from neko.schema import Example, SchemaError, read_jsonl

__all__ = ["correct_file", "read_input", "prediction_row"]


def read_input(
    path: str | Path,
    *,
    task: str | None = None,
    format: str | None = None,
    errors: list[SchemaError] | None = None,
    registry: Any = None,
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
            errors.extend(errs)
        return rows, len(errs)
    from neko.data.formats import read_any

    rows, report = read_any(path, format=format, task=task, skip_invalid=True, registry=registry)
    if errors is not None:
        errors.extend(report.errors)
    return rows, report.skipped


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


def prediction_row(ex: Example, res: Any, *, details: bool = False) -> dict[str, Any]:
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


def _fingerprint(
    input: Path, model_dir: Path, task: str | None, options: CorrectionOptions, extra: Any
) -> str:
    h = hashlib.sha256()
    with input.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    # Batch size and sort order do not change greedy outputs (tested), so a resumed run may change them.
    options = dataclasses.replace(options, batch_size=1, sort_by_length=True)
    # A re-tuned policy changes what rows get, so it is part of the run's identity.
    policy = model_dir / "neko_policy.json"
    tuned = hashlib.sha256(policy.read_bytes()).hexdigest() if policy.is_file() else None
    meta = [str(model_dir.resolve()), task, repr(options), repr(extra), tuned]
    h.update(json.dumps(meta).encode())
    return h.hexdigest()


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
    corrector: Any = None,
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
    from neko.io import atomic_write_json, atomic_write_text, check_not_input, exclusive_lock

    t0 = time.perf_counter()
    model_dir, input, output = Path(model_dir), Path(input), Path(output)
    options = corrector.options if corrector is not None else (options or CorrectionOptions())
    from neko.tasks import load_prompt_config

    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be a positive number of rows, got {max_rows}")
    sidecars = {k: output.with_name(output.name + k) for k in (".partial", ".partial.json", ".errors.jsonl")}
    for path in (output, *sidecars.values()):
        check_not_input(path, input)
    if output.is_dir():
        raise ValueError(f"{output}: is a directory; --output takes a file path (JSONL)")
    bad: list[SchemaError] = []
    registry = corrector.registry if corrector is not None else load_prompt_config(model_dir)[0]
    examples, n_bad = read_input(input, task=task, format=format, errors=bad, registry=registry)
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

    busy = (
        f"{output}: another `neko correct` is writing this output right now; wait for it to finish "
        "or choose another --output"
    )
    partial, meta_path, errors_path = (
        sidecars[".partial"],
        sidecars[".partial.json"],
        sidecars[".errors.jsonl"],
    )
    with exclusive_lock(output.with_name(output.name + ".lock"), busy):
        extra = (max_rows, details, format, all_outputs) + ((constrained,) if constrained else ())
        fp = _fingerprint(input, model_dir, task, options, extra)
        done: dict[str, str] = {}
        if partial.exists() and not overwrite:
            if not _partial_matches(meta_path, fp):
                raise ValueError(
                    f"{partial} is from a run with a different input, model or options; "
                    "delete it or pass --overwrite to start over"
                )
            done = _load_partial(partial)
        else:
            partial.unlink(missing_ok=True)
            atomic_write_json(meta_path, {"fingerprint": fp, "input": str(input), "model": str(model_dir)})

        todo = [ex for ex in examples if ex.id not in done]
        summary: dict[str, Any] = {
            "rows": len(examples),
            "resumed": len(examples) - len(todo),
            "invalid_rows": n_bad,
            "errors": 0,
            "used": {},
        }
        if todo:
            try:
                corrector = corrector or Corrector.from_pretrained(model_dir, options)
                prepared = [corrector.prepare(ex, task=task, fewshot=fewshot) for ex in todo]
                order = list(range(len(todo)))
                if options.sort_by_length:
                    order.sort(key=lambda i: -len(prepared[i].input_ids or ()))
                _run_batches(
                    corrector,
                    todo,
                    prepared,
                    order,
                    partial,
                    details,
                    progress,
                    summary["resumed"],
                    all_outputs,
                    constrained,
                )
            except BaseException:
                # A partial file with finished rows stays (the rerun resumes from it); without any it
                # holds no work, and its sidecar would only outlive the failed run.
                if not (partial.exists() and partial.stat().st_size > 0):
                    partial.unlink(missing_ok=True)
                    meta_path.unlink(missing_ok=True)
                raise
            done = _load_partial(partial)
        summary_counts(done, summary)
        if details:
            from neko.model.experts import expert_usage_by_task

            summary["experts_by_task"] = expert_usage_by_task(json.loads(line) for line in done.values())

        text = "".join(done[ex.id] + "\n" for ex in examples if ex.id in done)
        atomic_write_text(output, text)
        if n_bad:
            atomic_write_text(
                errors_path,
                "".join(json.dumps({"error": str(e), "line": e.line, "field": e.field}) + "\n" for e in bad),
            )
        else:
            errors_path.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
    summary.update(output=str(output), seconds=round(time.perf_counter() - t0, 3))
    if n_bad:
        summary["errors_file"] = str(errors_path)
    return summary


def summary_counts(done: dict[str, str], summary: dict[str, Any]) -> None:
    for line in done.values():
        row = json.loads(line)
        summary["errors"] += "error" in row
        if "decision" in row:
            used = row["decision"]["used"]
            summary["used"][used] = summary["used"].get(used, 0) + 1


def _run_batches(
    corrector,
    todo,
    prepared,
    order,
    partial: Path,
    details: bool,
    progress: bool,
    resumed: int,
    all_outputs: bool = False,
    constrained: bool = False,
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

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


def _append(fh: Any, data: bytes, partial: Path) -> None:
    """Append whole rows and fsync; a full disk is one error (the rows before stay for the resume)."""
    from neko.io import OutputError, os_error_message

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
