"""Run a build plan in parallel, resumably, and write the benchmark atomically.

Design choices:
- Workers (a ``multiprocessing`` pool) run recognizers on chunks of jobs and send rows back; only the
  main process writes, so shard files never interleave. Each finished chunk is appended to its
  shard (``<out>/.build/<task>.<split>.jsonl``) as whole lines, then flushed and fsynced.
- Resume: a rerun reads the shards, truncates a half-written last line (the only damage a kill
  can do to an append-only file) and skips every id already there, failures included (they are
  deterministic; ``retry_failed`` re-runs them).
- A row whose recognizer fails or returns nothing goes to ``failures.jsonl`` with its reason; the
  build goes on and the summary counts failures. A missing system tool stops the build at once with
  the install command, since every row would fail the same way.
- The final ``train/dev/test.jsonl``, ``failures.jsonl`` and ``manifest.json`` are written with
  ``neko.io`` (temp file + rename), in plan order, so the output is byte-identical across worker
  counts and interruptions.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neko.data.build.plan import RECOGNIZER_TASKS, SPLITS, BuildConfig, Job, make_plan
from neko.data.build.text import load_groups, norm_key, split_groups
from neko.data.recognizers.base import MissingToolError, Recognizer, RecognizerError
from neko.io import atomic_write_json, atomic_write_text

__all__ = ["BuildResult", "build_benchmark", "read_shard", "write_manifest", "CHUNK"]

WORK_DIR = ".build"
# rows per worker task: small for slow recognizers (even load), large where start-up dominates.
CHUNK = {"asr": 4, "ocr": 16, "mt": 100, "tec-grammar": 500, "tec-coherence": 500, "typo": 500}
_RECOGNIZERS: dict[str, Recognizer] = {}
# A fast first pass (no flat-lexicon rescoring, fewer active HMMs, phone-loop lookahead): 2x less CPU
# per utterance than the defaults on these 2 cores, and a weaker 1-best is what a correction
# benchmark needs anyway. Recorded in the manifest with the recognizer version.
ASR_DECODER = {"fwdflat": False, "maxhmmpf": 2000, "pl_window": 5}


@dataclass
class BuildResult:
    out: Path
    rows: dict[str, dict[str, int]]
    failures: dict[str, int]
    seconds: float
    resumed_rows: int = 0
    manifest: dict[str, Any] = field(default_factory=dict)


def _recognizer(task: str) -> Recognizer:
    if task not in _RECOGNIZERS:
        if task == "asr":
            from neko.data.recognizers.speech import PocketSphinxRecognizer

            _RECOGNIZERS[task] = PocketSphinxRecognizer(nbest=5, **ASR_DECODER)
        elif task == "ocr":
            from neko.data.recognizers.ocr import TesseractRecognizer

            _RECOGNIZERS[task] = TesseractRecognizer()
        elif task == "mt":
            from neko.data.recognizers.mt import ApertiumRoundTrip

            _RECOGNIZERS[task] = ApertiumRoundTrip()
        else:
            raise ValueError(f"task {task!r} has no recognizer")
    return _RECOGNIZERS[task]


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _worker_init(parent: int) -> None:
    """Workers exit when the build process dies (``kill -9`` included) instead of running on."""
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates us

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def recognizer_versions(tasks) -> dict[str, str]:
    return {t: _recognizer(t).version for t in RECOGNIZER_TASKS if t in tasks}


def _make_input(job: Job) -> Any:
    """The recognizer's input for one job (audio bytes, an image, the text)."""
    m = job.meta
    if job.task == "asr":
        from neko.data.recognizers.speech import synthesize

        return synthesize(job.reference, m["voice"], tempo=m["tempo"], noise=m["noise"], seed=m["audio_seed"])
    if job.task == "ocr":
        from neko.data.recognizers.ocr import Degradation, degrade, render_line

        return degrade(
            render_line(job.reference, m["font"]), Degradation(**m["degradation"]), m["image_seed"]
        )
    return job.reference


def _row(job: Job, hyps: str | list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"id": job.id, "task": job.task, "input": hyps, "output": job.reference}
    if job.task == "mt":
        row["source_lang"] = row["target_lang"] = "English"
    row["meta"] = {"split": job.split, **job.meta}
    return row


def run_chunk(jobs: list[Job]) -> list[tuple[str, dict[str, Any]]]:
    """Worker entry point: ``("ok", row)`` or ``("fail", failure)`` per job, in order."""
    task = jobs[0].task
    if task not in RECOGNIZER_TASKS:
        return [("ok", _row(j, j.input)) for j in jobs]
    rec = _recognizer(task)
    inputs: list[Any] = []
    errors: dict[int, str] = {}
    for i, j in enumerate(jobs):
        try:
            inputs.append(_make_input(j))
        except MissingToolError:
            raise
        except (RecognizerError, OSError, ValueError) as e:
            errors[i] = f"input: {e}"
            inputs.append(None)
    todo = [i for i in range(len(jobs)) if i not in errors]
    results = rec.recognize_batch([inputs[i] for i in todo]) if todo else []
    out: list[tuple[str, dict[str, Any]]] = []
    by_index = dict(zip(todo, results, strict=True))
    for i, j in enumerate(jobs):
        res = by_index.get(i)
        if i in errors or isinstance(res, Exception) or not res:
            reason = errors.get(i) or (str(res) if isinstance(res, Exception) else "no hypothesis")
            out.append(("fail", {"id": j.id, "task": j.task, "split": j.split, "reason": reason}))
        else:
            hyps = res if task in ("asr", "mt") else res[0]
            out.append(("ok", _row(j, hyps)))
    return out


def read_shard(path: Path) -> list[dict[str, Any]]:
    """Rows of an append-only shard; a half-written last line is cut off the file (resume safety)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    rows: list[dict[str, Any]] = []
    good_end = 0
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break  # no newline: the write was cut short
        try:
            rows.append(json.loads(data[pos:nl]))
        except json.JSONDecodeError:
            break
        pos = good_end = nl + 1
    if good_end < len(data):
        with path.open("r+b") as fh:
            fh.truncate(good_end)
            fh.flush()
            os.fsync(fh.fileno())
    return rows


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with path.open("ab") as fh:
        fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def _chunks(jobs: list[Job]) -> list[list[Job]]:
    """Chunks in the order that keeps an interrupted or cut-short build useful.

    Text tasks first (instant), then every task's test and dev rows, then the train rows of the
    recognizer tasks round-robin, so a build stopped early (``finalize_partial``) still has
    complete evaluation splits and some training rows of every task.
    """
    groups: dict[tuple[str, str], list[Job]] = {}
    for j in jobs:
        groups.setdefault((j.task, j.split), []).append(j)

    def cut(key: tuple[str, str]) -> list[list[Job]]:
        js, size = groups.get(key, []), CHUNK.get(key[0], 100)
        return [js[i : i + size] for i in range(0, len(js), size)]

    tasks = sorted({t for t, _ in groups}, key=lambda t: (t in RECOGNIZER_TASKS, t))
    chunks: list[list[Job]] = []
    for t in tasks:
        if t not in RECOGNIZER_TASKS:
            chunks += [c for s in SPLITS for c in cut((t, s))]
    for s in ("test", "dev"):
        for t in tasks:
            if t in RECOGNIZER_TASKS:
                chunks += cut((t, s))
    train = [cut((t, "train")) for t in tasks if t in RECOGNIZER_TASKS]
    # Round-robin weighted by chunk count so all tasks finish their train rows at about the same time.
    total = max((len(c) for c in train), default=0)
    for step in range(total):
        for cs in train:
            lo, hi = step * len(cs) // total, (step + 1) * len(cs) // total
            chunks += cs[lo:hi]
    return chunks


def _progress(total: int, done: int, quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(
        TextColumn("[bold]build[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeRemainingColumn(),
        disable=quiet,
    )
    tid = prog.add_task("rows", total=total, completed=done, failed=0)
    return prog, tid


def build_benchmark(
    cfg: BuildConfig,
    *,
    quiet: bool = False,
    retry_failed: bool = False,
    finalize_partial: bool = False,
    recognizers: dict[str, Recognizer] | None = None,
    max_chunks: int | None = None,
    log: Callable[[str], None] | None = None,
) -> BuildResult:
    """Build (or resume) the benchmark described by ``cfg``; returns counts and the manifest.

    ``max_chunks`` stops after that many chunks without finalizing (tests use it to interrupt).
    ``recognizers``: your own :class:`Recognizer` for ``asr``/``ocr``/``mt`` instead of the defaults
    (workers are forked, so the objects reach them as they are).
    ``finalize_partial``: run nothing, write the output from the rows done so far (the shards stay,
    so the build can still be resumed and finalized again); the manifest says ``partial``.
    """
    say = log or (lambda _m: None)
    t0 = time.time()
    saved = dict(_RECOGNIZERS)
    _RECOGNIZERS.update(recognizers or {})
    try:
        return _build(cfg, say, t0, quiet, retry_failed, finalize_partial, max_chunks)
    finally:
        _RECOGNIZERS.clear()
        _RECOGNIZERS.update(saved)


def _build(
    cfg: BuildConfig, say, t0: float, quiet: bool, retry_failed: bool, finalize_partial: bool, max_chunks
) -> BuildResult:
    out = Path(cfg.out)
    work = out / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    versions = recognizer_versions(cfg.tasks)  # fails fast with the install hint
    key_file = work / "plan_key.json"
    if key_file.exists():
        old = json.loads(key_file.read_text())
        if old != json.loads(json.dumps(cfg.plan_key())):
            raise ValueError(
                f"{work} holds an unfinished build with other settings ({old}); rerun with those "
                f"settings to resume it, or delete {work} to start over"
            )
    atomic_write_json(key_file, cfg.plan_key())
    pools = split_groups(load_groups(), _fractions(), cfg.seed)
    plan = make_plan(cfg, pools)

    done: dict[str, dict[str, Any]] = {}
    failed: dict[str, dict[str, Any]] = {}
    for task in cfg.tasks:
        for split in SPLITS:
            for r in read_shard(work / f"{task}.{split}.jsonl"):
                done[r["id"]] = r
    for f in read_shard(work / "failures.jsonl"):
        failed[f["id"]] = f
    if retry_failed:
        failed.clear()
        atomic_write_text(work / "failures.jsonl", "")
    todo = [j for j in plan if j.id not in done and j.id not in failed]
    resumed = len(plan) - len(todo)
    if resumed:
        say(f"resuming: {resumed} of {len(plan)} rows already done")

    chunks = [] if finalize_partial else _chunks(todo)
    if max_chunks is not None:
        chunks = chunks[:max_chunks]
    workers = cfg.workers or os.cpu_count() or 1
    prog, tid = _progress(len(plan), resumed, quiet)
    n_failed = len(failed)
    import signal
    import threading

    # SIGTERM unwinds like Ctrl-C so the pool is terminated and the shards stay whole.
    in_main = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    with prog:
        prog.update(tid, failed=n_failed)
        if workers == 1 or len(chunks) <= 1:
            results = map(run_chunk, chunks)
            pool = None
        else:
            pool = mp.get_context("fork").Pool(workers, initializer=_worker_init, initargs=(os.getpid(),))
            results = pool.imap_unordered(run_chunk, chunks)
        try:
            for res in results:
                oks = [r for kind, r in res if kind == "ok"]
                fails = [r for kind, r in res if kind == "fail"]
                for r in oks:
                    _append(work / f"{r['task']}.{r['meta']['split']}.jsonl", [r])
                    done[r["id"]] = r
                _append(work / "failures.jsonl", fails)
                for f in fails:
                    failed[f["id"]] = f
                n_failed += len(fails)
                prog.update(tid, advance=len(res), failed=n_failed)
            if pool is not None:  # normal end: idle workers exit cleanly
                pool.close()
                pool.join()
                pool = None
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
            if in_main:
                signal.signal(signal.SIGTERM, old_term)
    if max_chunks is not None and len(done) + len(failed) < len(plan):
        return BuildResult(out, {}, {}, time.time() - t0, resumed)

    rows_by_split: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    # A sentence that several fortunes share can be planned twice in one split (0.5% of rows);
    # keep the first row per (task, reference) so no test reference is counted twice.
    seen: set[tuple[str, str, str]] = set()
    duplicates = 0
    for j in plan:
        if j.id in done:
            key = (j.task, j.split, norm_key(j.reference))
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            rows_by_split[j.split].append(done[j.id])
    for split, rows in rows_by_split.items():
        atomic_write_text(
            out / f"{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        )
    fails_sorted = [failed[j.id] for j in plan if j.id in failed]
    atomic_write_text(
        out / "failures.jsonl", "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in fails_sorted)
    )
    counts = {t: {s: sum(1 for r in rows_by_split[s] if r["task"] == t) for s in SPLITS} for t in cfg.tasks}
    fail_counts = {t: sum(1 for f in fails_sorted if f["task"] == t) for t in cfg.tasks}
    seconds = time.time() - t0
    complete = len(done) + len(failed) >= len(plan)
    build_info = {
        "seconds_this_run": round(seconds, 1),
        "workers": workers,
        "resumed_rows": resumed,
        "duplicate_references_dropped": duplicates,
        "partial": not complete,
        "planned_rows": cfg.row_counts(),
    }
    manifest = write_manifest(out, cfg, versions, fail_counts, build_info=build_info)
    if complete and not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return BuildResult(out, counts, fail_counts, seconds, resumed, manifest)


def _fractions() -> dict[str, float]:
    from neko.data.build.plan import SPLIT_FRACTIONS

    return dict(SPLIT_FRACTIONS)


def write_manifest(
    out: Path,
    cfg: BuildConfig,
    versions: dict[str, str],
    failures: dict[str, int],
    *,
    build_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Count rows and compute per-split stats (``neko.eval.stats.dataset_stats``); write manifest.json."""
    from neko.data.schema import read_jsonl
    from neko.eval.stats import dataset_stats

    rows: dict[str, dict[str, int]] = {}
    stats: dict[str, Any] = {}
    for split in SPLITS:
        exs = read_jsonl(out / f"{split}.jsonl")
        for e in exs:
            rows.setdefault(e.task, {s: 0 for s in SPLITS})[split] += 1
        if split in ("dev", "test"):
            stats[split] = dataset_stats(exs)
    manifest = {
        "name": "neko embedded correction benchmark",
        "size": cfg.size if cfg.sizes is None else "custom",
        "seed": cfg.seed,
        "files": {s: f"{s}.jsonl" for s in SPLITS},
        "rows": rows,
        "failures": failures,
        "recognizers": versions,
        "text_sources": {
            "fortunes": "Debian fortunes + fortunes-min (BSD)",
            "wordnet": "Debian wordnet-base example phrases",
            "typos": "codespell dictionary.txt wrong->right pairs (data)",
        },
        "notes": {
            "mt": "round-trip translation English -> pivot -> English (Apertium); reference = original",
            "typo": "unseen task: dev (few-shot pool) and test only",
        },
        "config": cfg.to_dict(),
        "build": build_info or {},
        "stats": stats,
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest
