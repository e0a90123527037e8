"""The comparison's training budget: how it is split, what a run is estimated to cost, what it cost.

Every system gets the same optimizer steps of the same packed rows; BTX spends ``btx_branch_share``
of them on its task branches and the single-task models split them evenly.

Profiles. ``reduced`` (2-core CPU): every system of the paper (dense FFT, MoE FFT, NeKo, MoE LoRA,
BTX, the single-task models) at 144 steps x 4 packed rows of <= 384 tokens, every layer trained, the
last 6 of SmolLM2's 30 layers MoE, NeKo also decoded at top-1 and top-3; 80 test rows per task, ASR
40 per recognizer domain (3 on the shipped benchmark), typo 80 rows 0- and 5-shot, zero-shot 40 ASR
rows per recognizer domain and held-out condition (5) and 80 MT rows. On the shipped benchmark that
is 440 seen, 80 typo and 280 zero-shot rows: 5,720 decodes (each of the five multi-task systems
decodes all of them, the single-task models and NeKo's two top-K settings the seen rows). Estimated
(:func:`estimate`): training ~144 x (5 x 8.2 + 9.1) s + 10 extra training runs x 30 s ~ 2.1 h,
decoding 5,720 x 0.30 s ~ 29 min: about 2.5 h (2 h 33 min) on the fastest quiet 2-core machine
measured, up to 4.6 h on a slower one (an AVX2-only EPYC; CPU_SECONDS_PER_STEP_SLOW; under other jobs' load
correspondingly longer). ``full`` (one GPU): every system, 300 steps x 16 rows, bf16, every
test row (scripts/gpu_experiment.sh); not yet timed on a GPU. Whatever comes out is reported as
measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neko.experiment.config import ExperimentConfig
from neko.train.export import SUMMARY_FILE

__all__ = [
    "Estimate",
    "estimate",
    "estimate_seconds",
    "btx_steps",
    "single_steps",
    "recorded_budget",
    "CPU_SECONDS_PER_STEP",
    "CPU_SECONDS_PER_ROW",
    "CPU_SECONDS_PER_EXTRA_RUN",
    "CPU_SECONDS_PER_STEP_SLOW",
    "CPU_SLOW_DECODE_FACTOR",
]

# Seconds per optimizer step of 4 packed rows of <= 384 tokens on a quiet 2-core CPU (SmolLM2, last 6
# layers MoE; bench/NOTES.md "experiment: the reduced profile's measured time", 2026-12-02): dense
# 1,174 s, MoE FFT 1,142 s and NeKo 1,133 s for 144 steps, loading and saving included, i.e. 7.9-8.2 s
# per step; every dense or MoE system takes the slowest, 8.2 s (the MoE costs no more per step than
# dense at this size; NeKo's routing no more than MoE's). LoRA = dense x 1.11 (bench_experiment.py,
# adjacent runs under the same load: the one ratio of that loaded bench used).
CPU_SECONDS_PER_STEP = {"dense": 8.2, "single": 8.2, "moe": 8.2, "neko": 8.2, "lora": 9.1}
# Each training run after a system's first (BTX's five branches, merge and mix; the single-task
# models): loading, tokenizing and saving, ~30 s per run (bench/NOTES.md "experiment").
CPU_SECONDS_PER_EXTRA_RUN = 30.0
# Seconds per decoded row, model loading included: 0.26 measured on 2026-12-02 (711 s for 2,700
# decodes, bench/NOTES.md). That run decoded single texts with a 1.5 copy bias, which keeps outputs
# close to the input's length, and PocketSphinx-only ASR; plain decoding lets single texts run on to
# their limit and the Whisper / ATIS rows carry 5-hypothesis prompts, so the estimate allows 0.30
# (unmeasured allowance, +15%).
CPU_SECONDS_PER_ROW = 0.30
# 2-core machines differ in speed: the 8.2 s above came from 2026-12-02's, with AMX (185 tokens/s).
# On 2026-12-03 an AMD EPYC with AVX2 only trained the reduced profile's dense system at 14.3 s per
# step (2,065 s for 144 steps, 106 tokens/s) and MoE FFT at 16.0 s (the median of its last 40 steps,
# alone on the machine; the top-2 experts cost more there than with AMX). LoRA = MoE x 1.11 as above.
# Decoding there is unmeasured: taken as dense's ratio, 1.76. The estimate gives both ends.
CPU_SECONDS_PER_STEP_SLOW = {"dense": 14.3, "single": 14.3, "moe": 16.0, "neko": 16.0, "lora": 17.8}
CPU_SLOW_DECODE_FACTOR = 1.76


def btx_steps(cfg: ExperimentConfig, n_tasks: int) -> tuple[int, int]:
    """(steps per branch, mix steps): the branches share ``btx_branch_share`` of the budget."""
    branch = max(1, round(cfg.btx_branch_share * cfg.steps / n_tasks))
    return branch, max(1, cfg.steps - branch * n_tasks)


def single_steps(cfg: ExperimentConfig, n_tasks: int) -> int:
    """Steps of each single-task model: together they get one system's budget."""
    return max(1, cfg.steps // n_tasks)


@dataclass(frozen=True)
class Estimate:
    """A CPU run's estimated cost: training seconds, decoded rows and their seconds, on the fastest
    2-core machine measured; ``slow_s``: the whole run on the slowest one measured."""

    train_s: float
    decode_rows: int
    decode_s: float
    slow_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.train_s + self.decode_s


def estimate(cfg: ExperimentConfig, n_seen: int, n_typo: int, n_zeroshot: int, n_tasks: int = 5) -> Estimate:
    """The cost of a CPU run of ``cfg`` from the measured speeds above (quiet 2-core CPU, SmolLM2
    with its last 6 layers MoE; other shapes scale by tokens per step only). Every system but
    ``single`` decodes the seen, typo (0- and 5-shot) and zero-shot rows; ``single`` and NeKo's extra
    top-K settings decode the seen rows."""
    scale = cfg.micro_batch_size * cfg.max_seq_len / (4 * 384)
    decode_rows = 0
    for name in cfg.systems:
        decode_rows += n_seen if name == "single" else n_seen + 2 * n_typo + n_zeroshot
    if "neko" in cfg.systems:
        decode_rows += n_seen * len(cfg.inference_top_k)
    decode_s = decode_rows * CPU_SECONDS_PER_ROW
    train = _train_seconds(cfg, n_tasks, CPU_SECONDS_PER_STEP, scale)
    slow = _train_seconds(cfg, n_tasks, CPU_SECONDS_PER_STEP_SLOW, scale) + decode_s * CPU_SLOW_DECODE_FACTOR
    return Estimate(train, decode_rows, decode_s, slow)


def _train_seconds(cfg: ExperimentConfig, n_tasks: int, step: dict[str, float], scale: float) -> float:
    """Training seconds of every system at ``step`` seconds per 4 x 384-token step, ``scale`` of
    them per step of ``cfg``'s shape, plus each extra run's fixed overhead."""
    train = 0.0
    for name in cfg.systems:
        if name == "btx":
            b, m = btx_steps(cfg, n_tasks)
            train += (n_tasks * b * step["dense"] + m * step["moe"]) * scale
            train += (n_tasks + 1) * CPU_SECONDS_PER_EXTRA_RUN  # branches + merge + mix: n + 2 runs
        elif name == "single":
            train += n_tasks * single_steps(cfg, n_tasks) * step["single"] * scale
            train += (n_tasks - 1) * CPU_SECONDS_PER_EXTRA_RUN
        else:
            train += cfg.steps * step.get(name.removesuffix("_lb"), step["moe"]) * scale
    return train


def estimate_seconds(
    cfg: ExperimentConfig, n_seen: int, n_typo: int, n_zeroshot: int, n_tasks: int = 5
) -> float:
    """Wall-clock seconds of a CPU run of ``cfg`` (:func:`estimate`)."""
    return estimate(cfg, n_seen, n_typo, n_zeroshot, n_tasks).total_s


def _summaries(run_dir: Path) -> list[dict[str, Any]]:
    """Every finished run under ``run_dir`` (a system's own, or BTX's branches and mix)."""
    files = (
        [run_dir / SUMMARY_FILE]
        if (run_dir / SUMMARY_FILE).is_file()
        else sorted(run_dir.rglob(SUMMARY_FILE))
    )
    return [json.loads(f.read_text(encoding="utf-8")) for f in files]


def recorded_budget(cfg: ExperimentConfig, name: str, run_dir: Path, n_tasks: int) -> dict[str, Any]:
    """What the system trained, as its runs recorded it (a rerun reusing it still reports its cost)."""
    runs = _summaries(run_dir)
    rows = cfg.micro_batch_size
    if name == "btx":
        b, m = btx_steps(cfg, n_tasks)
        steps = f"{n_tasks} x {b} + {m} = {n_tasks * b + m} x {rows}"
        trains = f"{n_tasks} dense branches ({b} steps each), then every MoE weight ({m} steps)"
    elif name == "single":
        s = single_steps(cfg, n_tasks)
        steps = f"{n_tasks} x {s} = {n_tasks * s} x {rows}"
        trains = f"{n_tasks} dense models, each on its own task only ({s} steps each)"
    else:
        steps = f"{cfg.steps} x {rows}"
        trains = {
            "dense": "every weight",
            "lora": f"rank-{cfg.lora_r} adapters (attention, FFN, each expert) + routers; rest frozen",
            "moe": "every weight; plain routing (router from random init)",
            "moe_lb": "every weight; plain routing + balance loss",
            "neko": "every weight; task-guided routing",
            "neko_lb": "every weight; task-guided routing + balance loss",
        }[name]
    tokens = int(sum(r.get("tokens", 0) for r in runs))
    loop_s = sum(r.get("tokens", 0) / r["tokens_per_s"] for r in runs if r.get("tokens_per_s"))
    return {
        "steps": steps,
        "trains": trains,
        "tokens": tokens,
        "seconds": round(sum(float(r.get("elapsed_s", 0.0)) for r in runs), 1),
        "tokens_per_s": round(tokens / loop_s, 1) if loop_s else 0.0,
    }
