"""Training step time on the quick-start shape: logits at answer positions only vs every position,
and fp32 vs bf16 autocast, alternated in one process.

    python bench/bench_train_speed.py [--pairs 4] [--variants full,answer,answer+fused] [--threads 1]

Model and data are the quick start's (``neko quickstart`` on a CPU): SmolLM2-135M from the offline
cache (``neko base smollm2``), up-cycled to 8 experts top-2 on its last 6 layers, task-guided routing,
rows of <= 384 tokens packed 4 per micro batch from ``data/benchmark/train.jsonl`` (ASR weight 0.5,
chat template), AdamW at lr 2e-4, every weight trained. The run is built by ``neko.train.loop.setup``
exactly as ``neko train`` builds it; one timed step = ``forward_backward`` + optimizer step on one
micro batch (clipped), the same micro batches for every variant.

Variants (``+`` joins the parts; the first variant is the reference):
- ``full``: the code before issue 22: logits and cross-entropy at every position (the head hook
  off), AdamW as torch's for-loop implementation.
- ``answer``: the LM head and the cross-entropy at answer positions only
  (``neko.train.loss.answer_head``).
- ``+fused``: AdamW as torch's fused kernel (what ``neko train`` uses now on a CPU or CUDA process).
- ``-bf16`` suffix: inside ``torch.autocast(device, bfloat16)``, what ``--precision bf16`` does
  through Accelerate (fp32 master weights).
A step also clips the gradient norm to 1.0, as the quick start does.

Rounds alternate the variants (the order rotates each round) so that load from other processes hits
each alike; the table gives the minimum and the median step time per variant, the median of the
per-round speed-ups over the first variant, and tokens/s from the minimum. It also prints the packing fill
rate (real tokens / row positions) and the answer-token share over the whole first epoch of the
shipped train split. ``--agree N`` instead trains N steps with the code before and now from the
same seed and prints both loss curves and the largest weight difference. bench/NOTES.md keeps the
numbers with the machine and date.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def quickstart_config(out: Path, precision: str = "fp32") -> dict:
    """The CPU quick start's training config (runs/quickstart/model/train_config.yaml), one step."""
    return {
        "mode": "neko",
        "model": {"base": "smollm2", "attn_implementation": "sdpa"},
        "upcycle": {"num_experts": 8, "top_k": 2, "moe_layers": [24, 25, 26, 27, 28, 29]},
        "data": {
            "train": [{"path": str(REPO / "data" / "benchmark" / "train.jsonl")}],
            "task_weights": {"asr": 0.5},
            "max_seq_len": 384,
            "truncation": "cut_nbest",
            "packing": True,
            "use_chat_template": True,
        },
        "optim": {"lr": 2e-4, "warmup_ratio": 0.0, "scheduler": "constant"},
        "batch": {"micro_batch_size": 4},
        "routing": {"aux_loss": "free", "aux_coef": 0.01},
        "eval": {"every": 0},
        "log": {"progress": False},
        "max_steps": 1,
        "seed": 0,
        "output_dir": str(out),
        "precision": precision,
    }


def fill_rates(run) -> tuple[float, float, int]:
    """(real tokens / positions, answer tokens / real tokens, micro batches) over the first epoch."""
    real = total = answer = n = 0
    for step in range(run.steps_per_epoch[0]):
        for b in run.plan.micro_batches(0, step, 0):
            real += b.real_tokens
            total += b.total_tokens
            answer += run.plan.label_tokens(b)
            n += 1
    return real / max(1, total), answer / max(1, real), n


def agreement(steps: int, threads: int) -> None:
    """Train the quick start ``steps`` steps twice from the same seed, the code before issue 22 (full
    logits, for-loop AdamW) and today's, and print both loss curves and the largest weight change."""
    import torch
    from safetensors.torch import load_file

    import neko.train.loop as loop
    from neko.train.config import config_from_dict
    from neko.train.loss import answer_head
    from neko.train.monitor import read_log

    if threads:
        torch.set_num_threads(threads)
    fused = loop._fused_adamw
    with tempfile.TemporaryDirectory(prefix="bench-train-agree-") as tmp:
        curves, weights = {}, {}
        for name, on in (("before", False), ("now", True)):
            loop.answer_head = functools.partial(answer_head, enabled=on)
            loop._fused_adamw = fused if on else (lambda acc: False)
            cfg = quickstart_config(Path(tmp) / name)
            cfg.update(max_steps=steps, optim={"lr": 2e-4, "warmup_ratio": 0.1, "scheduler": "cosine"})
            t0 = time.perf_counter()
            loop.train(config_from_dict(cfg))
            print(f"{name}: {steps} steps in {time.perf_counter() - t0:.0f}s", flush=True)
            curves[name] = [r["loss"] for r in read_log(Path(tmp) / name) if "loss" in r]
            weights[name] = load_file(Path(tmp) / name / "model.safetensors")
        loop.answer_head, loop._fused_adamw = answer_head, fused
    for step, (a, b) in enumerate(zip(curves["before"], curves["now"], strict=True), 1):
        print(f"step {step}: loss before {a:.6f} now {b:.6f} (diff {b - a:+.2e})")
    now, before = weights["now"], weights["before"]
    diff = max(float((before[k] - now[k]).abs().max()) for k in now if now[k].numel())
    print(f"largest weight difference after {steps} steps: {diff:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=4, help="rounds; each runs every variant once")
    ap.add_argument(
        "--variants",
        default="full,answer,answer+fused",
        help="full, answer, answer+fused, ...-bf16; the first is the reference",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    ap.add_argument("--agree", type=int, default=0, help="instead: compare N training steps, before vs now")
    args = ap.parse_args()
    if args.agree:
        agreement(args.agree, args.threads)
        return

    import torch

    import neko.train.loop as loop
    from neko.train.config import config_from_dict
    from neko.train.loss import answer_head

    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        t0 = time.perf_counter()
        run = loop.setup(config_from_dict(quickstart_config(Path(tmp) / "run")))
        print(f"setup {time.perf_counter() - t0:.1f}s; {run.precision.describe()}", flush=True)
        fill, answer_share, n_micro = fill_rates(run)
        batches = run.plan.micro_batches(0, 0, 0) + run.plan.micro_batches(0, 1, 0)
        device = run.acc.device.type

        optimizers = {
            fused: loop._optimizer(run.unwrapped, run.cfg, fused=fused)
            for fused in {"+fused" in v for v in variants}
        }

        def step(variant: str, batch) -> float:
            on = not variant.startswith("full")
            loop.answer_head = functools.partial(answer_head, enabled=on)
            amp = (
                torch.autocast(device, dtype=torch.bfloat16)
                if variant.endswith("-bf16")
                else contextlib.nullcontext()
            )
            optimizer = optimizers["+fused" in variant]
            scale = 1.0 / max(1, run.plan.label_tokens(batch))
            t = time.perf_counter()
            with amp:
                loop.forward_backward(run, batch, scale)
            run.acc.clip_grad_norm_(run.model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return time.perf_counter() - t

        for v in variants:
            for _ in range(args.warmup):
                step(v, batches[0])
        times: dict[str, list[float]] = {v: [] for v in variants}
        ratios: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(args.pairs):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            batch = batches[r % len(batches)]
            got = {v: step(v, batch) for v in order}
            for v in variants:
                times[v].append(got[v])
                ratios[v].append(got[variants[0]] / got[v])
            print(f"round {r}: " + ", ".join(f"{v} {got[v]:.2f}s" for v in variants), flush=True)
        loop.answer_head = answer_head
    tokens = statistics.mean(b.real_tokens for b in batches)
    print()
    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, capability {torch.backends.cpu.get_cpu_capability()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"packing over epoch 1 ({n_micro} micro batches of 4 x 384): {fill:.1%} of positions are real tokens; "
        f"answer tokens are {answer_share:.1%} of real tokens"
    )
    head = f"speed-up vs {variants[0]}"
    print(f"{'variant':<12} {'min s':>7} {'median s':>9} {'tok/s (min)':>12} {head:>24}")
    for v in variants:
        print(
            f"{v:<12} {min(times[v]):>7.2f} {statistics.median(times[v]):>9.2f} "
            f"{tokens / min(times[v]):>12.1f} {statistics.median(ratios[v]):>24.3f}"
        )


if __name__ == "__main__":
    main()
