"""`neko eval` against one plain pass of its normalizer, on a large file of real 5-best ASR lists.

    python bench/bench_eval_pass.py [--copies 2] [--reps 3] [--before-tree DIR]

The reference (issue 22, item 4): one plain loop of transformers' Whisper ``EnglishTextNormalizer``
(with Whisper's spelling map, no memo) over the file's references and predictions, i.e. the least
any WER script on this file does. Measured against it, in the same run:

  same pass, neko's    the same loop with the class neko runs (transformers' code, precompiled
                       regexes, per-character memo: neko.metrics.normalizers.precompiled)
  neko eval, library   what the CLI command runs, in this process: load_predictions + score_rows
                       (prediction, 1-best, ROVER, both oracles, 1,000-resample CIs) + print_report
                       into a string; the normalizer's memo cleared first (imports already done,
                       as for the plain loop)
  same, 1 worker       NEKO_EVAL_WORKERS=1: what the second core buys
  neko eval, CLI       ``python -m neko eval --pred FILE`` in a subprocess: interpreter start-up,
                       imports, load, scoring and the printed tables (stdout discarded)
  CLI of DIR           the same command run with the ``neko`` package of another checkout (e.g.
                       the code before a change, ``git archive HEAD neko | tar -x -C DIR``)

The file: every ASR row of data/benchmark/*.jsonl (Whisper tiny.en and Whisper-Large (ATIS) 5-best
lists, PocketSphinx 5-best lists), concatenated ``--copies`` times with distinct ids (``-r0``,
``-r1`` ...). Prediction: the 1-best, or, for a seeded half of the rows, the 1-best with one word
dropped or replaced by the reference's word at that position (a corrector's output; a new string
the normalizer has not seen). Each repetition times every method once, in rotating order; the table
gives the minimum over repetitions (other jobs on a shared machine only ever add time) and the
median of the per-repetition ratios (each method against the plain pass of the same repetition).
CPU time counts this process, its forked workers and the CLI subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def build_file(path: Path, copies: int, data_dir: Path) -> list[dict]:
    """The benchmark's ASR rows, ``copies`` times with distinct ids, each with a ``prediction``."""
    source = []
    for f in sorted(data_dir.glob("*.jsonl")):
        with f.open(encoding="utf-8") as fh:
            source += [r for r in map(json.loads, fh) if r.get("task") == "asr"]
    rows = []
    for k in range(copies):
        for r in source:
            rid = f"{r['id']}-r{k}"
            rng = random.Random(rid)
            words = r["input"][0].split()
            if words and rng.random() < 0.5:
                j = rng.randrange(len(words))
                ref = r["output"].split()
                if rng.random() < 0.5 or j >= len(ref):
                    del words[j]
                else:
                    words[j] = ref[j]
            rows.append({**r, "id": rid, "prediction": " ".join(words)})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return rows


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), _cpu()
    fn()
    return time.perf_counter() - wall, _cpu() - cpu


@contextlib.contextmanager
def _workers(n: int | None):
    old = os.environ.get("NEKO_EVAL_WORKERS")
    if n is not None:
        os.environ["NEKO_EVAL_WORKERS"] = str(n)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("NEKO_EVAL_WORKERS", None)
        else:
            os.environ["NEKO_EVAL_WORKERS"] = old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=2, help="concatenate the ASR rows this many times")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of every method (min is reported)")
    ap.add_argument("--data", type=Path, default=REPO / "data" / "benchmark")
    ap.add_argument("--before-tree", type=Path, default=None, help="also time the CLI of this checkout")
    args = ap.parse_args()

    from rich.console import Console
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    from neko.eval.predictions import load_predictions
    from neko.eval.score import ScoreConfig, print_report, score_rows
    from neko.metrics._parallel import default_workers
    from neko.metrics.normalizers import get_normalizer, whisper_spelling_map
    from neko.metrics.normalizers.precompiled import english_text_normalizer_class

    tmp = Path(tempfile.mkdtemp(prefix="neko-bench-eval-"))
    path = tmp / "asr_5best.jsonl"
    rows = build_file(path, args.copies, args.data)
    refs = [r["output"] for r in rows]
    preds = [r["prediction"] for r in rows]
    hyps = [h for r in rows for h in r["input"]]
    print(
        f"{len(rows)} rows ({len(rows) // args.copies} ASR rows x {args.copies}), {path.stat().st_size / 1e6:.1f} MB; "
        f"plain pass: {len(refs) + len(preds)} calls; distinct strings: refs+predictions "
        f"{len(set(refs + preds))}, + hypotheses {len(set(refs + preds + hyps))}"
    )

    def plain_pass(cls: type) -> Callable[[], None]:
        def run() -> None:
            norm = cls(whisper_spelling_map())
            for ref, pred in zip(refs, preds, strict=True):
                norm(ref)
                norm(pred)

        return run

    report: dict = {}

    def library(workers: int | None) -> Callable[[], None]:
        def run() -> None:
            get_normalizer("whisper").clear_cache()
            with _workers(workers):
                scored = load_predictions([str(path)])
                report.update(score_rows(scored, ScoreConfig()))
                print_report(report, Console(file=io.StringIO(), width=160))

        return run

    def cli(tree: Path) -> Callable[[], None]:
        cmd = [sys.executable, "-m", "neko", "eval", "--pred", str(path)]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        return lambda: subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, check=True)

    methods: dict[str, Callable[[], None]] = {
        "plain normalizer pass (refs + predictions)": plain_pass(EnglishTextNormalizer),
        "same pass, neko's precompiled normalizer, no memo": plain_pass(english_text_normalizer_class()),
        "neko eval, library": library(None),
        "neko eval, library, 1 worker": library(1),
        "neko eval, CLI (subprocess)": cli(REPO),
    }
    if args.before_tree is not None:
        methods[f"neko eval, CLI of {args.before_tree}"] = cli(args.before_tree.resolve())
    names = list(methods)
    walls: dict[str, list[float]] = {n: [] for n in names}
    cpus: dict[str, list[float]] = {n: [] for n in names}
    load0 = os.getloadavg()[0]
    for rep in range(args.reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            wall, cpu = _timed(methods[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
            print(f"  rep {rep + 1}: {name:<52} {wall:7.2f} s wall {cpu:7.2f} s CPU", flush=True)
    load1 = os.getloadavg()[0]

    ref_name = names[0]
    print(
        f"\n{platform.machine()}, {os.cpu_count()} CPUs, eval workers {default_workers()}; "
        f"load average {load0:.1f} at start, {load1:.1f} at end; min of {args.reps} reps"
    )
    print(
        f"{'method':<52} {'wall s':>8} {'CPU s':>8} {'wall':>8} {'wall':>8} {'CPU':>8}\n"
        f"{'':<52} {'(min)':>8} {'(min)':>8} {'x plain':>8} {'x plain':>8} {'x plain':>8}\n"
        f"{'':<52} {'':>8} {'':>8} {'(min)':>8} {'(median)':>8} {'(min)':>8}"
    )
    for name in names:
        ratio = min(walls[name]) / min(walls[ref_name])
        per_rep = statistics.median(w / p for w, p in zip(walls[name], walls[ref_name], strict=True))
        cpu_ratio = min(cpus[name]) / min(cpus[ref_name])
        print(
            f"{name:<52} {min(walls[name]):>8.2f} {min(cpus[name]):>8.2f} {ratio:>7.2f}x {per_rep:>7.2f}x"
            f" {cpu_ratio:>7.2f}x"
        )
    asr = report["tasks"]["asr"]
    print(
        f"\nWER %: prediction {100 * asr['systems']['prediction']['wer']:.2f}, 1best {100 * asr['systems']['1best']['wer']:.2f}, "
        f"rover {100 * asr['systems']['rover']['wer']:.2f}, o_nb {100 * asr['oracles']['nbest']['wer']:.2f}, "
        f"o_cp {100 * asr['oracles']['compositional']['wer']:.2f}"
    )
    path.unlink()
    tmp.rmdir()


if __name__ == "__main__":
    main()
