"""Rows/s of ``neko correct`` (the library path) on the quick-start model: this tree's code against
another tree's (today's commit), per mode and precision, alternated in one run.

    git -C . archive HEAD | tar x -C /tmp/neko_head
    python bench/bench_correct_speed.py --model runs/quickstart/model --before /tmp/neko_head \\
        [--modes rescore,generate] [--precisions fp32,bf16] [--rows 48] [--rounds 3]

Each tree runs in its own worker process (two ``neko`` packages cannot share one), which loads the
model once per precision and then answers requests: correct these rows in this mode, return the
seconds ``Corrector.run`` took and the predictions. The parent alternates the trees (the order
rotates each round) so that load from other processes hits both alike, and reports per mode and
precision: rows/s from each tree's fastest round, the median of the per-round speed-ups, and
whether the predictions are identical to the first tree's in the same precision. bf16 runs are
compared with the same tree's fp32 rows/s too.

Rows: ``--rows`` dev rows per mode from ``data/benchmark/dev.jsonl`` (seeded): N-best rows (ASR, MT)
for rescore, every task for generate; the ``auto`` mode (each task's tuned policy) on the same
mixture as generate. Options are ``CorrectionOptions``' defaults otherwise (greedy, batch 16), as
``neko correct`` runs them. With ``--wer`` the ASR rows are scored (Whisper-normalized corpus WER)
per tree, mode and precision. bench/NOTES.md keeps the numbers with the machine and date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # names every version of CorrectionOptions takes


def worker(root: str, model: str, threads: int) -> None:
    """Serve requests on stdin (one JSON line each) with the ``neko`` package of ``root``."""
    sys.path.insert(0, root)
    import dataclasses

    import torch

    from neko.infer.correct import Corrector
    from neko.infer.options import CorrectionOptions

    if threads:
        torch.set_num_threads(threads)
    correctors: dict[str, Corrector] = {}
    for line in sys.stdin:
        req = json.loads(line)
        prec = req["precision"]
        if prec not in correctors:
            correctors[prec] = Corrector.from_pretrained(model, CorrectionOptions(dtype=TORCH_DTYPES[prec]))
        c = correctors[prec]
        c.options = dataclasses.replace(c.options, mode=req["mode"])
        prepared = [c.prepare(r, index=i) for i, r in enumerate(req["rows"])]
        t0 = time.perf_counter()
        results = c.run(prepared)
        seconds = time.perf_counter() - t0
        out = {"seconds": seconds, "predictions": [r.text for r in results], "neko": str(Path(root))}
        print(json.dumps(out), flush=True)


class Worker:
    def __init__(self, name: str, root: Path, model: str, threads: int) -> None:
        self.name = name
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(root), "--model", model]
        cmd += ["--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root)

    def run(self, mode: str, precision: str, rows: list[dict]) -> dict:
        self.proc.stdin.write(json.dumps({"mode": mode, "precision": precision, "rows": rows}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} died")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def pick_rows(mode: str, n: int, seed: int) -> list[dict]:
    rows = [json.loads(x) for x in (REPO / "data" / "benchmark" / "dev.jsonl").read_text().splitlines() if x]
    if mode == "rescore":
        rows = [r for r in rows if isinstance(r["input"], list)]
    random.Random(seed).shuffle(rows)
    return rows[:n]


def corpus_wer(rows: list[dict], preds: list[str]) -> float | None:
    sys.path.insert(0, str(REPO))
    from neko.metrics.wer import corpus_wer as wer

    pairs = [(r["output"], p) for r, p in zip(rows, preds, strict=True) if r["task"] == "asr"]
    if not pairs:
        return None
    return 100 * wer([a for a, _ in pairs], [b for _, b in pairs], normalizer="whisper").wer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(REPO / "runs" / "quickstart" / "model"))
    ap.add_argument(
        "--before", help="the other tree (e.g. `git archive HEAD` unpacked); omit: this tree only"
    )
    ap.add_argument("--modes", default="rescore,generate")
    ap.add_argument("--precisions", default="fp32")
    ap.add_argument("--rows", type=int, default=48, help="dev rows per mode")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker (0 = torch's default)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--wer", action="store_true", help="score the ASR rows (WER) per tree, mode and precision"
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.model, args.threads)
        return
    trees = [("before", Path(args.before))] if args.before else []
    trees.append(("now", REPO))
    workers = {name: Worker(name, root, args.model, args.threads) for name, root in trees}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    cases = [(m, p) for p in precisions for m in modes]
    rows = {m: pick_rows(m, args.rows, args.seed) for m in modes}
    secs: dict[tuple[str, str, str], list[float]] = {}
    preds: dict[tuple[str, str, str], list[str]] = {}
    try:
        for name in workers:  # warm-up: load each precision, first batch
            for mode, prec in cases:
                workers[name].run(mode, prec, rows[mode][:4])
        for r in range(args.rounds):
            names = list(workers)
            names = names[r % len(names) :] + names[: r % len(names)]
            for mode, prec in cases:
                for name in names:
                    got = workers[name].run(mode, prec, rows[mode])
                    secs.setdefault((name, mode, prec), []).append(got["seconds"])
                    preds[(name, mode, prec)] = got["predictions"]
                    print(f"round {r} {name:<6} {mode:<8} {prec}: {got['seconds']:.1f}s", flush=True)
    finally:
        for w in workers.values():
            w.close()
    print()
    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
        f"model {args.model}; {args.rows} dev rows per mode, {args.rounds} rounds"
    )
    first = trees[0][0]
    print(
        f"{'mode':<9} {'precision':<9} {'tree':<7} {'rows/s':>7} {'min s':>7} "
        f"{'x ' + first:>9} {'x fp32':>7} {'same as ' + first + ' fp32':>20}"
        + ("  ASR WER" if args.wer else "")
    )
    for mode, prec in cases:
        for name in workers:
            t = secs[(name, mode, prec)]
            speed = statistics.median(a / b for a, b in zip(secs[(first, mode, prec)], t, strict=True))
            fp32 = secs.get((name, mode, "fp32"))
            vs32 = statistics.median(a / b for a, b in zip(fp32, t, strict=True)) if fp32 else float("nan")
            ref = preds[(first, mode, "fp32")] if (first, mode, "fp32") in preds else None
            same = sum(a == b for a, b in zip(ref, preds[(name, mode, prec)], strict=True)) if ref else 0
            line = (
                f"{mode:<9} {prec:<9} {name:<7} {len(rows[mode]) / min(t):>7.2f} {min(t):>7.1f} "
                f"{speed:>9.2f} {vs32:>7.2f} {f'{same}/{len(rows[mode])}':>20}"
            )
            if args.wer:
                w = corpus_wer(rows[mode], preds[(name, mode, prec)])
                line += f"  {w:.2f}" if w is not None else "  -"
            print(line)


if __name__ == "__main__":
    main()
