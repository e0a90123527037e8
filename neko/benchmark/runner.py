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
- The zero-shot file (``test_zeroshot.jsonl``, see :mod:`neko.benchmark.plan`) is built with the
  rest, or alone (``only_zeroshot``) beside an existing build: then only its rows run and only it
  and the manifest's ``zeroshot`` section are written, so the other files stay byte for byte.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from neko.benchmark.plan import (
    RECOGNIZER_TASKS,
    SPLIT_FRACTIONS,
    SPLITS,
    WHISPER_RECOGNIZER,
    WHISPER_TRAIN_CONDITIONS,
    WHISPER_ZEROSHOT_CONDITIONS,
    ZEROSHOT_ASR_VOICES,
    ZEROSHOT_SPLIT,
    BuildConfig,
    Job,
    is_whisper_job,
    make_plan,
)
from neko.benchmark.recognizers.acoustics import Acoustics, render_speech
from neko.benchmark.recognizers.base import MissingToolError, Recognizer, RecognizerError
from neko.benchmark.recognizers.mt import PIVOTS, UNSEEN_PIVOTS, ApertiumRoundTrip
from neko.benchmark.recognizers.ocr import Degradation, TesseractRecognizer, degrade, render_line
from neko.benchmark.recognizers.speech import PocketSphinxRecognizer, synthesize
from neko.benchmark.recognizers.whisper_ct2 import CT2WhisperRecognizer
from neko.benchmark.text import load_groups, norm_key, split_groups
from neko.eval.stats import dataset_stats
from neko.io import atomic_write_json, atomic_write_text
from neko.metrics.oracles import nbest_oracle_wer
from neko.metrics.wer import corpus_wer
from neko.schema import read_jsonl

__all__ = ["BuildResult", "build_benchmark", "read_shard", "write_manifest", "CHUNK"]

WORK_DIR = ".build"
# rows per worker task: small for slow recognizers (even load), large where start-up dominates.
CHUNK = {
    "asr": 4,
    WHISPER_RECOGNIZER: 8,
    "ocr": 16,
    "mt": 100,
    "tec-grammar": 500,
    "tec-coherence": 500,
    "typo": 500,
}
_RECOGNIZERS: dict[str, Recognizer] = {}
_USER_TASKS: set[str] = set()  # tasks whose recognizer the caller gave (used for every variant)
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
    zeroshot_rows: dict[str, int] = field(default_factory=dict)
    zeroshot_failures: int = 0


def _recognizer(task: str, zeroshot: bool = False, name: str | None = None) -> Recognizer:
    """The recognizer of ``task``, or of its zero-shot rows (held-out MT pivots; a PocketSphinx decoder
    reset before every utterance, since its state carries over and would make a row depend on what
    its worker decoded before), or the one a row names (``meta.recognizer``: the Whisper rows).
    A caller's ``recognizers={task or name: ...}`` serves all of them."""
    if name == WHISPER_RECOGNIZER:
        if name not in _RECOGNIZERS:
            _RECOGNIZERS[name] = CT2WhisperRecognizer(nbest=5)
        return _RECOGNIZERS[name]
    if task in _USER_TASKS:
        return _RECOGNIZERS[task]
    key = f"{task}:zeroshot" if zeroshot else task
    if key not in _RECOGNIZERS:
        if task == "asr":
            _RECOGNIZERS[key] = PocketSphinxRecognizer(nbest=5, fresh_state=zeroshot, **ASR_DECODER)
        elif task == "ocr":
            _RECOGNIZERS[key] = TesseractRecognizer()
        elif task == "mt":
            _RECOGNIZERS[key] = ApertiumRoundTrip(tuple(UNSEEN_PIVOTS if zeroshot else PIVOTS))
        else:
            raise ValueError(f"task {task!r} has no recognizer")
    return _RECOGNIZERS[key]


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _worker_init(parent: int) -> None:
    """Workers exit when the build process dies (``kill -9`` included) instead of running on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates us

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def recognizer_versions(tasks, whisper: bool = False) -> dict[str, str]:
    out = {t: _recognizer(t).version for t in RECOGNIZER_TASKS if t in tasks}
    if whisper:
        rec = _recognizer("asr", name=WHISPER_RECOGNIZER)
        check = getattr(rec, "check", None)
        if check is not None:
            check()
        out["asr-whisper"] = rec.version
    return out


def zeroshot_recognizers(counts: dict[str, int]) -> dict[str, str]:
    """Version and held-out condition of each zero-shot task's recognizer; a missing Apertium pair
    fails here, before any row runs."""
    out = {}
    if counts.get("asr"):
        out["asr"] = f"{_recognizer('asr', True).version}; flite voices {', '.join(ZEROSHOT_ASR_VOICES)}"
    if counts.get("mt"):
        rec = _recognizer("mt", True)
        check = getattr(rec, "check_pairs", None)
        if check is not None:
            check()
        out["mt"] = rec.version
    return out


def _make_input(job: Job) -> Any:
    """The recognizer's input for one job (audio bytes, an image, the text)."""
    m = job.meta
    if job.task == "asr" and "acoustics" in m:
        return render_speech(job.reference, Acoustics(**m["acoustics"]), m["audio_seed"])
    if job.task == "asr":
        return synthesize(job.reference, m["voice"], tempo=m["tempo"], noise=m["noise"], seed=m["audio_seed"])
    if job.task == "ocr":
        return degrade(
            render_line(job.reference, m["font"]), Degradation(**m["degradation"]), m["image_seed"]
        )
    return job.reference


def _row(job: Job, hyps: str | list[str], scores: list[float] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"id": job.id, "task": job.task, "input": hyps, "output": job.reference}
    if job.task == "mt":
        row["source_lang"] = row["target_lang"] = "English"
    row["meta"] = {"split": job.split, **job.meta}
    if scores is not None:  # the recognizer's own score per hypothesis, under HyPoradise's key
        row["meta"]["am_score"] = scores
    return row


def run_chunk(jobs: list[Job]) -> list[tuple[str, dict[str, Any]]]:
    """Worker entry point: ``("ok", row)`` or ``("fail", failure)`` per job, in order."""
    task = jobs[0].task
    if task not in RECOGNIZER_TASKS:
        return [("ok", _row(j, j.input)) for j in jobs]
    rec = _recognizer(task, bool(jobs[0].meta.get("zeroshot")), jobs[0].meta.get("recognizer"))
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
    scored = getattr(rec, "recognize_scored", None)
    batch = [inputs[i] for i in todo]
    results: list[Any] = (scored(batch) if scored is not None else rec.recognize_batch(batch)) if todo else []
    out: list[tuple[str, dict[str, Any]]] = []
    by_index = dict(zip(todo, results, strict=True))
    for i, j in enumerate(jobs):
        res = by_index.get(i)
        if i in errors or isinstance(res, Exception) or not res:
            reason = errors.get(i) or (str(res) if isinstance(res, Exception) else "no hypothesis")
            out.append(("fail", {"id": j.id, "task": j.task, "split": j.split, "reason": reason}))
        else:
            if scored is not None:
                out.append(("ok", _row(j, [h for h, _ in res], [sc for _, sc in res])))
            else:
                out.append(("ok", _row(j, res if task in ("asr", "mt") else res[0])))
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
    # A task's rows of one recognizer form a group (chunks never mix Whisper and PocketSphinx rows).
    groups: dict[tuple[str, str], list[Job]] = {}
    for j in jobs:
        groups.setdefault((j.meta.get("recognizer") or j.task, j.split), []).append(j)

    def cut(key: tuple[str, str]) -> list[list[Job]]:
        js, size = groups.get(key, []), CHUNK.get(key[0], 100)
        return [js[i : i + size] for i in range(0, len(js), size)]

    slow = {*RECOGNIZER_TASKS, WHISPER_RECOGNIZER}
    tasks = sorted({t for t, _ in groups}, key=lambda t: (t in slow, t))
    chunks: list[list[Job]] = []
    for t in tasks:
        if t not in slow:
            chunks += [c for s in SPLITS for c in cut((t, s))]
    for s in ("test", "dev"):
        for t in tasks:
            if t in slow:
                chunks += cut((t, s))
    train = [cut((t, "train")) for t in tasks if t in slow]
    # Round-robin weighted by chunk count so all tasks finish their train rows at about the same time.
    total = max((len(c) for c in train), default=0)
    for step in range(total):
        for cs in train:
            lo, hi = step * len(cs) // total, (step + 1) * len(cs) // total
            chunks += cs[lo:hi]
    # Last: the other rows then run in the order they always did (a decoder's history can matter).
    for t in tasks:
        chunks += cut((t, ZEROSHOT_SPLIT))
    return chunks


def _progress(total: int, done: int, quiet: bool):
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
    only_zeroshot: bool = False,
    only_whisper: bool = False,
) -> BuildResult:
    """Build (or resume) the benchmark described by ``cfg``; returns counts and the manifest.

    ``max_chunks`` stops after that many chunks without finalizing (tests use it to interrupt).
    ``recognizers``: your own :class:`Recognizer` for ``asr``/``ocr``/``mt`` instead of the defaults
    (workers are forked, so the objects reach them as they are).
    ``finalize_partial``: run nothing, write the output from the rows done so far (the shards stay,
    so the build can still be resumed and finalized again); the manifest says ``partial``.
    ``only_zeroshot``: build just ``test_zeroshot.jsonl`` beside an existing build of the same seed
    and size (its other files are left as they are; the manifest gains its ``zeroshot`` section).
    ``only_whisper``: build just the Whisper ASR rows beside an existing build of the same seed and
    size and merge them into its files (rows already there are replaced; every other row stays byte
    for byte); the manifest gains its ``whisper`` section.
    """
    if only_zeroshot and only_whisper:
        raise ValueError("--zeroshot-only and --whisper-only are two separate builds; pick one")
    say = log or (lambda _m: None)
    t0 = time.time()
    saved = dict(_RECOGNIZERS)
    _RECOGNIZERS.update(recognizers or {})
    _USER_TASKS.update(recognizers or {})
    try:
        only = "zeroshot" if only_zeroshot else "whisper" if only_whisper else None
        return _build(cfg, say, t0, quiet, retry_failed, finalize_partial, max_chunks, only)
    finally:
        _RECOGNIZERS.clear()
        _RECOGNIZERS.update(saved)
        _USER_TASKS.clear()


@dataclass
class _Finished:
    """The rows of a run, in plan order, sorted into what each output file gets."""

    rows_by_split: dict[str, list[dict[str, Any]]]
    zeroshot_rows: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    zeroshot_failures: list[dict[str, Any]]
    duplicates: int
    complete: bool


def _build(
    cfg: BuildConfig,
    say,
    t0: float,
    quiet: bool,
    retry_failed: bool,
    finalize_partial: bool,
    max_chunks,
    only: str | None = None,
) -> BuildResult:
    out = Path(cfg.out)
    zs_counts, wh_counts = cfg.zeroshot_counts(), cfg.whisper_counts()
    _check_partial_build(only, zs_counts, wh_counts)
    # A partial build keeps its shards apart, so it never mixes with an unfinished full build.
    work = out / (WORK_DIR + (f"-{only}" if only else ""))
    # fails fast with the install hint
    if only == "whisper":
        versions = recognizer_versions((), whisper=True)
    else:
        versions = {} if only == "zeroshot" else recognizer_versions(cfg.tasks, whisper=bool(wh_counts))
    zs_versions = {} if only == "whisper" else zeroshot_recognizers(zs_counts)
    plan = _plan(cfg, out, only)
    _claim_work_dir(work, cfg)
    done, failed = _read_progress(work, cfg, retry_failed)
    todo = [j for j in plan if j.id not in done and j.id not in failed]
    resumed = len(plan) - len(todo)
    if resumed:
        say(f"resuming: {resumed} of {len(plan)} rows already done")

    chunks = [] if finalize_partial else _chunks(todo)
    if max_chunks is not None:
        chunks = chunks[:max_chunks]
    workers = cfg.workers or os.cpu_count() or 1
    _run_chunks(chunks, work, done, failed, workers, _progress(len(plan), resumed, quiet))
    if max_chunks is not None and len(done) + len(failed) < len(plan):
        return BuildResult(out, {}, {}, time.time() - t0, resumed)

    fin = _finish(plan, done, failed)
    seconds = time.time() - t0
    if only == "whisper":
        result = _write_whisper_only(out, wh_counts, fin, versions, seconds, resumed)
    else:
        build_info = {
            "seconds_this_run": round(seconds, 1),
            "workers": workers,
            "resumed_rows": resumed,
            "duplicate_references_dropped": fin.duplicates,
            "partial": not fin.complete,
            "planned_rows": cfg.row_counts(),
        }
        outputs = _Outputs(zs_counts, wh_counts, versions, zs_versions, build_info)
        result = _write_outputs(out, cfg, fin, outputs, only == "zeroshot", seconds, resumed)
    if fin.complete and not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _check_partial_build(only: str | None, zs_counts: dict[str, int], wh_counts: dict[str, int]) -> None:
    if only == "zeroshot" and not zs_counts:
        raise ValueError("--zeroshot-only: this build plans no zero-shot rows (asr/mt not among --tasks?)")
    if only == "whisper" and not wh_counts:
        raise ValueError(
            "--whisper-only: this build plans no Whisper rows (asr not among --tasks, or --whisper-rows 0)"
        )


def _plan(cfg: BuildConfig, out: Path, only: str | None) -> list[Job]:
    """The jobs of this build; a partial build keeps its own rows, after checking the build it extends."""
    plan = make_plan(cfg, split_groups(load_groups(), _fractions(), cfg.seed))
    if only == "zeroshot":
        _check_existing_build(out, cfg, plan, "--zeroshot-only")
        plan = [j for j in plan if j.split == ZEROSHOT_SPLIT and not is_whisper_job(j.id)]
    elif only == "whisper":
        _check_existing_build(out, cfg, plan, "--whisper-only")
        plan = [j for j in plan if is_whisper_job(j.id)]
    return plan


def _claim_work_dir(work: Path, cfg: BuildConfig) -> None:
    """Create the work directory, or check that the unfinished build in it has these settings."""
    work.mkdir(parents=True, exist_ok=True)
    key_file = work / "plan_key.json"
    if key_file.exists():
        old = json.loads(key_file.read_text())
        if old != json.loads(json.dumps(cfg.plan_key())):
            raise ValueError(
                f"{work} holds an unfinished build with other settings ({old}); rerun with those "
                f"settings to resume it, or delete {work} to start over"
            )
    atomic_write_json(key_file, cfg.plan_key())


def _read_progress(
    work: Path, cfg: BuildConfig, retry_failed: bool
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Rows done and rows failed by earlier runs, by id (failures forgotten with ``retry_failed``)."""
    done: dict[str, dict[str, Any]] = {}
    failed: dict[str, dict[str, Any]] = {}
    for task in cfg.tasks:
        for split in (*SPLITS, ZEROSHOT_SPLIT):
            for r in read_shard(work / f"{task}.{split}.jsonl"):
                done[r["id"]] = r
    for f in read_shard(work / "failures.jsonl"):
        failed[f["id"]] = f
    if retry_failed:
        failed.clear()
        atomic_write_text(work / "failures.jsonl", "")
    return done, failed


def _finish(plan: list[Job], done: dict[str, dict[str, Any]], failed: dict[str, dict[str, Any]]) -> _Finished:
    rows_by_split: dict[str, list[dict[str, Any]]] = {s: [] for s in (*SPLITS, ZEROSHOT_SPLIT)}
    # A sentence that several fortunes share can be planned twice in one split (0.5% of rows);
    # keep the first row per (task, reference) so no test reference is counted twice.
    seen: set[tuple[str, str, str, str]] = set()
    duplicates = 0
    for j in plan:
        if j.id in done:
            key = (j.task, j.split, j.meta.get("recognizer", ""), norm_key(j.reference))
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            rows_by_split[j.split].append(done[j.id])
    zs_rows = rows_by_split.pop(ZEROSHOT_SPLIT)
    fails_sorted = [failed[j.id] for j in plan if j.id in failed]
    return _Finished(
        rows_by_split,
        zs_rows,
        [f for f in fails_sorted if f["split"] != ZEROSHOT_SPLIT],
        [f for f in fails_sorted if f["split"] == ZEROSHOT_SPLIT],
        duplicates,
        len(done) + len(failed) >= len(plan),
    )


def _write_whisper_only(
    out: Path,
    wh_counts: dict[str, int],
    fin: _Finished,
    versions: dict[str, str],
    seconds: float,
    resumed: int,
) -> BuildResult:
    failures = fin.failures + fin.zeroshot_failures
    _merge_whisper(out, wh_counts, fin.rows_by_split, fin.zeroshot_rows, failures, versions, seconds)
    made = {s: len(r) for s, r in fin.rows_by_split.items()}
    return BuildResult(
        out,
        {"asr": made},
        {"asr": len(fin.failures)},
        seconds,
        resumed,
        json.loads((out / "manifest.json").read_text(encoding="utf-8")),
        {"asr": len(fin.zeroshot_rows)} if fin.zeroshot_rows else {},
        len(fin.zeroshot_failures),
    )


@dataclass
class _Outputs:
    """What the manifest records beside the rows: planned counts, recognizer versions, build facts."""

    zeroshot_counts: dict[str, int]
    whisper_counts: dict[str, int]
    versions: dict[str, str]
    zeroshot_versions: dict[str, str]
    build_info: dict[str, Any]


def _write_outputs(
    out: Path,
    cfg: BuildConfig,
    fin: _Finished,
    o: _Outputs,
    only_zeroshot: bool,
    seconds: float,
    resumed: int,
) -> BuildResult:
    """Write the split files, failures.jsonl and the manifest (only the zero-shot file and its
    manifest section for ``only_zeroshot``)."""
    counts: dict[str, dict[str, int]] = {}
    fail_counts: dict[str, int] = {}
    if not only_zeroshot:
        for split, rows in fin.rows_by_split.items():
            _write_rows(out / f"{split}.jsonl", rows)
        atomic_write_text(
            out / "failures.jsonl", "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in fin.failures)
        )
        counts = {
            t: {s: sum(1 for r in fin.rows_by_split[s] if r["task"] == t) for s in SPLITS} for t in cfg.tasks
        }
        fail_counts = {t: sum(1 for f in fin.failures if f["task"] == t) for t in cfg.tasks}
    zs_section = None
    if o.zeroshot_counts or fin.zeroshot_rows:
        _write_rows(out / f"{ZEROSHOT_SPLIT}.jsonl", fin.zeroshot_rows)
        zs_info = {"seconds_this_run": round(seconds, 1), "workers": o.build_info["workers"]}
        zs_section = zeroshot_manifest(
            out, o.zeroshot_counts, o.zeroshot_versions, fin.zeroshot_failures, zs_info
        )
    if only_zeroshot:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        manifest["zeroshot"] = zs_section
        atomic_write_json(out / "manifest.json", manifest)
    else:
        manifest = write_manifest(
            out, cfg, o.versions, fail_counts, build_info=o.build_info, zeroshot=zs_section
        )
        if o.whisper_counts:
            manifest["whisper"] = whisper_manifest(out, o.versions.get("asr-whisper", ""))
            atomic_write_json(out / "manifest.json", manifest)
    zs_made = {t: sum(1 for r in fin.zeroshot_rows if r["task"] == t) for t in o.zeroshot_counts}
    return BuildResult(
        out, counts, fail_counts, seconds, resumed, manifest, zs_made, len(fin.zeroshot_failures)
    )


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _run_chunks(
    chunks: list[list[Job]],
    work: Path,
    done: dict[str, dict[str, Any]],
    failed: dict[str, dict[str, Any]],
    workers: int,
    progress: Any,
) -> None:
    """Run ``chunks`` in a worker pool, appending every finished row to its shard (and ``done``)."""
    prog, tid = progress
    n_failed = len(failed)
    # SIGTERM unwinds like Ctrl-C so the pool is terminated and the shards stay whole.
    in_main = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    with prog:
        prog.update(tid, failed=n_failed)
        if workers == 1 or len(chunks) <= 1:
            results = map(run_chunk, chunks)
            pool = None
        else:
            # CTranslate2 (Whisper) deadlocks in a forked child once the parent process has run it
            # (its thread pools do not survive fork), so Whisper rows get fresh processes; the other
            # recognizers fork, which lets a caller's own recognizer objects reach the workers as-is.
            whisper = any(j.meta.get("recognizer") == WHISPER_RECOGNIZER for c in chunks for j in c)
            method = "spawn" if whisper and WHISPER_RECOGNIZER not in _USER_TASKS else "fork"
            pool = mp.get_context(method).Pool(workers, initializer=_worker_init, initargs=(os.getpid(),))
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


def _check_existing_build(out: Path, cfg: BuildConfig, plan: list[Job], flag: str) -> None:
    """A partial build (``flag``) needs the build it extends: the same seed and size, and a test
    split this plan made (its sentences are the ones the new rows must avoid)."""
    mf = out / "manifest.json"
    if not mf.is_file() or not (out / "test.jsonl").is_file():
        raise ValueError(
            f"{flag} adds rows to an existing build, but {out} has no "
            f"manifest.json/test.jsonl; run `neko data build` without {flag}"
        )
    m = json.loads(mf.read_text(encoding="utf-8"))
    size = cfg.size if cfg.sizes is None else "custom"
    if (m.get("seed"), m.get("size")) != (cfg.seed, size):
        raise ValueError(
            f"{mf} is a build with seed {m.get('seed')} size {m.get('size')!r}; rerun with "
            f"--seed {m.get('seed')} --size {m.get('size')} so the zero-shot rows avoid its test sentences"
        )
    # Rows the partial build replaces (Whisper) or never plans (released sets) are not compared.
    planned = {j.id: j.reference for j in plan if j.split == "test" and not is_whisper_job(j.id)}
    have = {e.id: e.output for e in read_jsonl(out / "test.jsonl")}
    stray = [i for i, ref in planned.items() if have.get(i) != ref]
    if stray:
        raise ValueError(
            f"{out / 'test.jsonl'}: rows {stray[:3]} are not what this version plans for seed {cfg.seed}; "
            f"rebuild the whole benchmark (`neko data build`) instead of {flag}"
        )


def _merge_whisper(
    out: Path,
    built: dict[str, int],
    rows_by_split: dict[str, list[dict[str, Any]]],
    zs_rows: list[dict[str, Any]],
    failures: list[dict[str, Any]],
    versions: dict[str, str],
    seconds: float,
) -> dict[str, Any]:
    """Put the Whisper rows of the ``built`` splits into an existing build's files (replacing the
    Whisper rows of those splits; other splits stay as they are) and update its manifest: row
    counts and stats, the recognizer, and the ``whisper`` section."""
    new = {**rows_by_split, ZEROSHOT_SPLIT: zs_rows}
    for split, rows in new.items():
        if split not in built:  # a split this run did not plan keeps its Whisper rows
            continue
        path = out / f"{split}.jsonl"
        if not rows and not path.exists():
            continue
        kept = []
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip() and not is_whisper_job(json.loads(line)["id"]):
                    kept.append(line + "\n")
        atomic_write_text(
            path, "".join(kept) + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        )
    old_fails = (
        [
            line + "\n"
            for line in (out / "failures.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()
            and not (is_whisper_job(json.loads(line)["id"]) and json.loads(line).get("split") in built)
        ]
        if (out / "failures.jsonl").exists()
        else []
    )
    atomic_write_text(
        out / "failures.jsonl",
        "".join(old_fails) + "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in failures),
    )
    section = whisper_manifest(out, versions.get("asr-whisper", ""))
    section["build"] = {"seconds_this_run": round(seconds, 1), "failures": len(failures)}

    def update(manifest: dict[str, Any]) -> None:
        manifest.setdefault("recognizers", {})["asr-whisper"] = versions.get("asr-whisper", "")
        manifest["whisper"] = section

    refresh_manifest(out, update)
    return section


def whisper_manifest(out: Path, version: str) -> dict[str, Any]:
    """The manifest's ``whisper`` section: per split and condition, rows, 1-best and N-best oracle WER
    (Whisper English normalizer, corpus WER %), and how many rows' hypotheses all agree."""
    table: dict[str, dict[str, Any]] = {}
    for split in (*SPLITS, ZEROSHOT_SPLIT):
        path = out / f"{split}.jsonl"
        if not path.exists():
            continue
        by_cond: dict[str, list[Any]] = {}
        for e in read_jsonl(path):
            if e.meta.get("recognizer") == WHISPER_RECOGNIZER:
                by_cond.setdefault(e.meta.get("condition", "?"), []).append(e)
                by_cond.setdefault("all", []).append(e)
        for cond, exs in sorted(by_cond.items()):
            refs = [e.output for e in exs]
            nb = [e.input if isinstance(e.input, list) else [e.input] for e in exs]
            table.setdefault(split, {})[cond] = {
                "rows": len(exs),
                "one_best_wer": round(100 * corpus_wer(refs, [h[0] for h in nb]).wer, 2),
                "oracle_wer": round(100 * nbest_oracle_wer(refs, nb).wer, 2),
                "hypotheses_per_row": round(sum(len(h) for h in nb) / len(nb), 2),
            }
    return {
        "recognizer": version,
        "ids": "asr-whisper-<split>-<n>; task asr, meta.recognizer = " + WHISPER_RECOGNIZER,
        "conditions": {
            "seen (train/dev/test)": {
                k: {
                    "share": v[0],
                    "voices": v[1],
                    "noise": v[2],
                    "snr_db": v[3],
                    "reverb": v[4],
                    "tempo": v[5],
                }
                for k, v in WHISPER_TRAIN_CONDITIONS.items()
            },
            "held out (test_zeroshot)": {
                k: {"share": round(v[0], 3), "voices": v[1], "noise": v[2], "snr_db": v[3]}
                for k, v in WHISPER_ZEROSHOT_CONDITIONS.items()
            },
        },
        "scores": "meta.am_score: CTranslate2's length-normalised log-probability per hypothesis",
        "wer": table,
    }


def zeroshot_manifest(
    out: Path,
    counts: dict[str, int],
    versions: dict[str, str],
    failures: list[dict[str, Any]],
    build_info: dict[str, Any],
) -> dict[str, Any]:
    """The manifest's ``zeroshot`` section: what the file holds, how it was made, its stats."""
    exs = read_jsonl(out / f"{ZEROSHOT_SPLIT}.jsonl")
    rows: dict[str, int] = {}
    for e in exs:
        rows[e.task] = rows.get(e.task, 0) + 1
    conditions = {
        "asr": f"flite voices {', '.join(ZEROSHOT_ASR_VOICES)} (no train/dev/test row uses them), clean audio, "
        "decoded as the other ASR rows",
        "mt": "Apertium round trips through pivot languages no training row used: "
        + "; ".join(f"{k} ({' > '.join(v)})" for k, v in UNSEEN_PIVOTS.items()),
    }
    return {
        "file": f"{ZEROSHOT_SPLIT}.jsonl",
        "rows": rows,
        "planned_rows": counts,
        "failures": [{"id": f["id"], "reason": f["reason"]} for f in failures],
        "conditions": {t: c for t, c in conditions.items() if t in counts},
        "recognizers": versions,
        "references": "unused sentences of the test split's pool: never a train/dev/test reference",
        "build": build_info,
        "stats": dataset_stats(exs),
    }


def _fractions() -> dict[str, float]:
    return dict(SPLIT_FRACTIONS)


def rows_and_stats(out: Path) -> tuple[dict[str, dict[str, int]], dict[str, Any]]:
    """The manifest's ``rows`` (task -> split -> count) and ``stats`` (dev, test) of the build at ``out``."""
    rows: dict[str, dict[str, int]] = {}
    stats: dict[str, Any] = {}
    for split in SPLITS:
        exs = read_jsonl(out / f"{split}.jsonl")
        for e in exs:
            rows.setdefault(e.task, {s: 0 for s in SPLITS})[split] += 1
        if split in ("dev", "test"):
            stats[split] = dataset_stats(exs)
    return rows, stats


def refresh_manifest(out: Path, update: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply ``update`` to the manifest of the build at ``out`` and recount its rows and stats (after
    rows were merged into its files)."""
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    update(manifest)
    manifest["rows"], manifest["stats"] = rows_and_stats(out)
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def write_manifest(
    out: Path,
    cfg: BuildConfig,
    versions: dict[str, str],
    failures: dict[str, int],
    *,
    build_info: dict[str, Any] | None = None,
    zeroshot: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Count rows and compute per-split stats (``neko.eval.stats.dataset_stats``); write manifest.json
    (with the zero-shot file's section when one was built)."""
    rows, stats = rows_and_stats(out)
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
    if zeroshot is not None:
        manifest["zeroshot"] = zeroshot
    atomic_write_json(out / "manifest.json", manifest)
    return manifest
