"""Packed vs padded batches: share of real tokens and training tokens/s, same data, model and run.

    python bench/bench_packing.py [--rows 384] [--rounds 12] [--notes bench/NOTES.md]

Model: a tiny-ish Mixtral (hidden 256 by default, 4 layers, 8 experts, top-2) with task-guided routing, trained
by the same pieces ``neko train`` uses (``neko.train.packing``, ``neko.train.loss``, ``task_routing``,
AdamW). Packed: rows of ``max_seq_len`` tokens filled best-fit-decreasing. Padded: one example per
row, right-padded to the longest example of its micro batch (what ``DataCollatorWithPadding`` does),
with as many examples per micro batch as a packed micro batch holds on average, so both layouts see
the same examples per step. Timing is interleaved (one packed and one padded micro batch per round,
order alternating) so that load from other processes on a shared machine hits both alike; tokens/s
counts real (non-padding) tokens; the table gives medians over rounds and the median of the
per-round packed/padded ratios (robust to load spikes). Targets (issue 5): >= 95% real tokens, >= 1.5x padded tokens/s.

Data: ``data/benchmark/train.jsonl`` when it exists, otherwise generated rows in the benchmark's
shape (ASR/MT 5-best lists, OCR/TEC texts, 4-30 words); the table says which.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look two more"
).split()


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    tasks = ["asr", "mt", "ocr", "tec-grammar", "tec-coherence"]
    rows = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        ref = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30)))

        def noisy(ref: str = ref) -> str:
            return " ".join(w if rng.random() > 0.15 else rng.choice(WORDS) for w in ref.split())

        row: dict = {"id": f"{task}-{i}", "task": task, "output": ref}
        if task in ("asr", "mt"):
            row["input"] = [noisy() for _ in range(5)]
            if task == "mt":
                row.update(source_lang="English", target_lang="English")
        else:
            row["input"] = noisy()
        rows.append(row)
    return rows


def measure(model, packed, padded, rounds: int) -> dict[str, list[float]]:
    """Interleaved timing: each round runs one packed and one padded micro batch (forward, backward,
    AdamW step, task-guided routing), order alternating, so machine-load swings hit both layouts
    alike. Returns per-round real tokens/s of each layout (paired by round)."""
    import torch

    from neko.model.routing import task_routing
    from neko.train.loss import token_losses

    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(b) -> float:
        t0 = time.perf_counter()
        with task_routing(model, b.task_ids):
            loss, mask = token_losses(model(**b.model_inputs()).logits, b.labels)
            (loss.sum() / mask.sum().clamp(min=1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    step(packed[0])  # warm-up (lazy init, allocator)
    step(padded[0])
    out: dict[str, list[float]] = {"packed": [], "padded": []}
    for r in range(rounds):
        order = (("packed", packed), ("padded", padded))
        for name, batches in order if r % 2 == 0 else order[::-1]:
            b = batches[r % len(batches)]
            out[name].append(b.real_tokens / step(b))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=384, help="examples (synthetic data only)")
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument(
        "--packed-mbs", type=int, default=4, help="packed rows per micro batch (neko_smollm2_cpu.yaml: 4)"
    )
    ap.add_argument("--rounds", type=int, default=16, help="interleaved packed+padded rounds")
    ap.add_argument(
        "--hidden",
        type=int,
        default=256,
        help="model width (attention's share of the cost shrinks as it grows)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared CPU)")
    ap.add_argument("--notes", type=Path, default=None, help="append the table to this markdown file")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from neko.paths import BENCHMARK_DIR
    from neko.schema import write_jsonl

    tmp = Path(tempfile.mkdtemp(prefix="bench_packing_"))
    shipped = BENCHMARK_DIR / "train.jsonl"
    if shipped.exists() and shipped.stat().st_size > 0:
        train_file, source = shipped, f"shipped {shipped.relative_to(REPO)}"
    else:
        train_file = tmp / "train.jsonl"
        write_jsonl(synthetic_rows(args.rows), train_file)
        source = f"generated ({args.rows} rows, benchmark shape; data/benchmark/train.jsonl absent)"

    # padded micro batch = the examples a packed micro batch holds on average (same examples per step)
    from neko.model.routing import enable_task_guided_routing
    from neko.model.tiny import tiny_mixtral, tiny_tokenizer
    from neko.train.config import DataSource
    from neko.train.mixture import build_mixture
    from neko.train.packing import collate_packed, collate_padded, pack_rows

    tok = tiny_tokenizer()
    tasks = ["asr", "mt", "ocr", "tec-grammar", "tec-coherence"]
    index = {t: i for i, t in enumerate(tasks)}
    mix, _ = build_mixture([DataSource(str(train_file))], tok, max_seq_len=args.max_seq_len)
    exs = mix.epoch(0)
    rows = pack_rows(exs, args.max_seq_len)
    per_row = len(exs) / len(rows)
    padded_mbs = max(1, round(per_row * args.packed_mbs))
    packed_batches = [
        collate_packed(
            [[exs[i] for i in r] for r in rows[k : k + args.packed_mbs]],
            tok.pad_token_id,
            index,
            length=args.max_seq_len,
        )
        for k in range(0, len(rows) - args.packed_mbs + 1, args.packed_mbs)
    ]
    padded_batches = [
        collate_padded(exs[k : k + padded_mbs], tok.pad_token_id, index)
        for k in range(0, len(exs) - padded_mbs + 1, padded_mbs)
    ]
    # real-token share over the whole epoch, as training sees it
    share = {
        "packed": sum(b.real_tokens for b in packed_batches) / sum(b.total_tokens for b in packed_batches),
        "padded": sum(b.real_tokens for b in padded_batches) / sum(b.total_tokens for b in padded_batches),
    }
    model = tiny_mixtral(
        seed=0,
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        num_hidden_layers=4,
        num_local_experts=8,
        num_experts_per_tok=2,
    ).train()
    enable_task_guided_routing(model, tasks=tasks)
    res = measure(model, packed_batches, padded_batches, args.rounds)
    tps = {k: statistics.median(v) for k, v in res.items()}
    # the median of per-round ratios: robust to load spikes from other processes on a shared machine
    ratio = statistics.median(a / b for a, b in zip(res["packed"], res["padded"], strict=True))
    machine = f"CPU, {torch.get_num_threads()} threads, {os.cpu_count()} cores ({platform.machine()}), load avg {os.getloadavg()[0]:.1f}"
    lines = [
        f"data: {source}; model: tiny-ish Mixtral (hidden {args.hidden}, 4 layers, 8 experts, top-2) with task-guided "
        f"routing; max_seq_len {args.max_seq_len}; {args.rounds} interleaved rounds of one packed and one "
        f"padded micro batch (forward + backward + AdamW); medians over rounds, ratio = median of "
        f"per-round ratios; {machine}",
        "",
        "| layout | examples / micro batch | real tokens (whole epoch) | tokens/s (real) | vs padded |",
        "|---|---|---|---|---|",
        f"| packed ({args.packed_mbs} rows x {args.max_seq_len}) | {per_row * args.packed_mbs:.1f} | "
        f"{100 * share['packed']:.1f}% | {tps['packed']:.0f} | {ratio:.2f}x |",
        f"| padded (to longest in batch) | {padded_mbs} | {100 * share['padded']:.1f}% | "
        f"{tps['padded']:.0f} | 1.00x |",
        "",
        f"targets: real tokens >= 95% ({'met' if share['packed'] >= 0.95 else 'NOT met'}), "
        f"tokens/s >= 1.5x padded ({'met' if ratio >= 1.5 else 'NOT met'})",
    ]
    table = "\n".join(lines)
    print(table)
    if args.notes:
        with open(args.notes, "a", encoding="utf-8") as fh:
            fh.write(
                f"\n## packing\n\n`python bench/bench_packing.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n"
                f"{table}\n"
            )


if __name__ == "__main__":
    main()
