"""What a ``neko experiment`` run costs on this machine: seconds per optimizer step of each kind of
system and seconds per decoded test row, with the exact recipe the experiment trains with.

Each system trains ``--steps`` optimizer steps (the first is left out of the per-step time: it
includes one-time allocation); then the trained NeKo (or the last system) decodes ``--rows`` test
rows per task of the seen tasks, the typo task (0-shot) and the zero-shot file, as the experiment
does. The estimate of :func:`neko.experiment.compare.estimate_seconds` takes its constants from
these numbers (bench/NOTES.md keeps them with the machine, load and date).

Wall time on a shared machine says more about the other jobs than about neko, so the process's CPU
time is recorded too (a thread notes it whenever a step's log line appears, and around each decode):
torch keeps both cores busy, so on a quiet 2-core machine wall time is about CPU time / 2 (the
dense step measured 7.5 s wall for 15 CPU-s there, bench/NOTES.md "upcycling").

    python bench/bench_experiment.py --steps 6 --rows 8 --systems dense,moe,neko,lora
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path


def step_seconds(run_dir: Path) -> list[float]:
    """Per-step wall seconds from a run's train_log.jsonl (elapsed_s is cumulative)."""
    recs = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines() if '"loss"' in x]
    t = [r["elapsed_s"] for r in recs if "elapsed_s" in r]
    return [b - a for a, b in zip(t, t[1:], strict=False)]


class StepCPU:
    """Process CPU seconds at each new step line of a run's train_log.jsonl (polled every 0.1 s)."""

    def __init__(self, log: Path):
        self.log, self.marks, self._stop = log, [], threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        seen = 0
        while not self._stop.is_set():
            n = self.log.read_text().count('"loss"') if self.log.is_file() else 0
            if n > seen:
                self.marks.append(time.process_time())
                seen = n
            time.sleep(0.1)

    def __enter__(self) -> StepCPU:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def per_step(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rows", type=int, default=8, help="test rows per task decoded")
    ap.add_argument("--systems", default="dense,moe,neko,lora")
    ap.add_argument("--work", default="/tmp/neko-bench-experiment")
    ap.add_argument("--out", default=None, help="append the result as a JSON line here")
    args = ap.parse_args()

    from neko.experiment.config import CPU_MOE_LAYERS, PROFILES, ExperimentConfig
    from neko.experiment.evaluate import UNSEEN_TASKS, load_split, predict, subsample
    from neko.experiment.systems import system_train_config
    from neko.paths import BENCHMARK_DIR
    from neko.train.loop import train

    cfg = ExperimentConfig(**{**PROFILES["reduced"], "moe_layers": CPU_MOE_LAYERS})
    work = Path(args.work)
    result: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "load_before": os.getloadavg(),
        "steps": args.steps,
        "per_step_s": {},
        "per_step_cpu_s": {},
        "tokens_per_s": {},
    }
    last = None
    for name in args.systems.split(","):
        mode = "dense" if name == "single" else name
        tc = system_train_config(cfg, work / name, mode, args.steps)
        tc.log.progress = False
        (work / name / "train_log.jsonl").unlink(missing_ok=True)
        with StepCPU(work / name / "train_log.jsonl") as cpu:
            r = train(tc, overwrite=True)
        per = step_seconds(work / name)[1:] or step_seconds(work / name)
        per_cpu = cpu.per_step()
        result["per_step_s"][name] = round(sum(per) / len(per), 2)
        result["per_step_cpu_s"][name] = round(sum(per_cpu) / max(1, len(per_cpu)), 2)
        result["tokens_per_s"][name] = round(r.tokens_per_s, 1)
        print(
            f"{name}: {result['per_step_s'][name]} s/step wall, {result['per_step_cpu_s'][name]} CPU-s/step, "
            f"{r.tokens_per_s:.0f} tokens/s (wall)",
            flush=True,
        )
        last = work / name
    model = work / "neko" if (work / "neko").is_dir() else last
    rows = subsample(load_split(BENCHMARK_DIR / "test.jsonl"), args.rows, 0)
    sets = {
        "seen": [e for e in rows if e.task not in UNSEEN_TASKS],
        "typo": [e for e in rows if e.task in UNSEEN_TASKS],
        "zeroshot": subsample(load_split(BENCHMARK_DIR / "test_zeroshot.jsonl"), args.rows, 0),
    }
    total_rows, total_s, total_cpu = 0, 0.0, 0.0
    for key, exs in sets.items():
        t0, c0 = time.time(), time.process_time()
        predict(model, exs, cfg.eval)
        s, c = time.time() - t0, time.process_time() - c0
        result[f"decode_{key}_s_per_row"] = round(s / len(exs), 2)
        result[f"decode_{key}_cpu_s_per_row"] = round(c / len(exs), 2)
        total_rows, total_s, total_cpu = total_rows + len(exs), total_s + s, total_cpu + c
        print(
            f"decode {key}: {s / len(exs):.2f} s/row wall, {c / len(exs):.2f} CPU-s/row ({len(exs)} rows)",
            flush=True,
        )
    result["decode_s_per_row"] = round(total_s / total_rows, 2)
    result["decode_cpu_s_per_row"] = round(total_cpu / total_rows, 2)
    result["load_after"] = os.getloadavg()
    print(json.dumps(result))
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
