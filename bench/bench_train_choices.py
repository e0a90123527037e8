"""Training choices for a short CPU budget, measured on dev: tokens/s and dev WER/BLEU per choice.

Each variant trains the quick-start model (SmolLM2 up-cycled, last 6 layers 8-expert MoE, task-guided)
for the same number of optimizer steps on the shipped train split, then decodes the same dev rows
(``--dev-rows`` per task, seeded; the unseen typo task 5-shot) with the default correction options and
scores raw generation. Nothing here looks at the test split.

    python bench/bench_train_choices.py --steps 60 --variants full,frozen,frozen_lr5e-4
    python bench/bench_train_choices.py --list

Results are appended to ``--out`` (JSON lines) and printed as a table; bench/NOTES.md keeps the
numbers with the machine and date.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

# name -> (QuickstartConfig overrides, TrainConfig overrides applied after)
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {"qs": {"lr": 2e-4}, "train_layers": None},
    "frozen": {"qs": {"lr": 2e-4}, "train_layers": "moe"},
    "frozen_lr1e-4": {"qs": {"lr": 1e-4}, "train_layers": "moe"},
    "frozen_lr5e-4": {"qs": {"lr": 5e-4}, "train_layers": "moe"},
    "frozen_lr1e-3": {"qs": {"lr": 1e-3}, "train_layers": "moe"},
    "frozen_plain": {"qs": {"lr": 2e-4}, "train_layers": "moe", "chat": False},
    "frozen_emb": {"qs": {"lr": 2e-4}, "train_layers": "moe", "train_embeddings": True},
    "frozen_mbs2": {"qs": {"lr": 2e-4, "micro_batch_size": 2}, "train_layers": "moe"},
    "frozen_12": {"qs": {"lr": 2e-4}, "train_layers": "-12:"},
    "frozen_15": {"qs": {"lr": 2e-4}, "train_layers": "-15:"},
    "no_emb": {"qs": {"lr": 2e-4}, "train_layers": "all"},
    "no_emb_headroom": {
        "qs": {"lr": 2e-4},
        "train_layers": "all",
        "task_weights": {"ocr": 2.0, "tec-grammar": 2.0, "mt": 0.5, "tec-coherence": 0.5},
    },
    "no_emb_lr4e-4": {"qs": {"lr": 4e-4}, "train_layers": "all"},
    "full_plain": {"qs": {"lr": 2e-4}, "train_layers": None, "chat": False},
    "full_lr5e-4": {"qs": {"lr": 5e-4}, "train_layers": None},
    "frozen_constant": {"qs": {"lr": 2e-4}, "train_layers": "moe", "scheduler": "constant"},
    "frozen_asr2": {"qs": {"lr": 2e-4}, "train_layers": "moe", "task_weights": {"asr": 2.0}},
}


def train_variant(name: str, steps: int, out: Path, base: str) -> dict[str, Any]:
    from neko.experiment.quickstart import QuickstartConfig, model_train_config
    from neko.train.loop import train

    v = VARIANTS[name]
    cfg = replace(QuickstartConfig(base=base, steps=steps, train_time_s=0, **v["qs"]).for_device())
    tc = model_train_config(cfg, out)
    tc.log.progress = False
    tc.model.train_layers = v.get("train_layers")
    tc.model.train_embeddings = v.get("train_embeddings", False)
    tc.data.use_chat_template = v.get("chat", True)
    tc.data.task_weights = v.get("task_weights", {})
    tc.max_steps = steps
    if "scheduler" in v:
        tc.optim.scheduler = v["scheduler"]
    t0 = time.time()
    r = train(tc, overwrite=True)
    return {
        "train_s": round(time.time() - t0, 1),
        "tokens_per_s": round(r.tokens_per_s, 1),
        "tokens": r.tokens,
    }


def dev_scores(model_dir: Path, rows_per_task: int, base: str) -> dict[str, float]:
    from neko.experiment.evaluate import EvalPlan, load_split, predict, score_system_outputs, subsample
    from neko.paths import BENCHMARK_DIR

    dev = load_split(Path(BENCHMARK_DIR) / "dev.jsonl")
    rows = subsample(dev, rows_per_task, seed=1)
    ids = {e.id for e in rows}
    pool = [e for e in dev if e.id not in ids]  # shots for the unseen task never include a scored row
    plan = EvalPlan(rows_per_task=rows_per_task, max_new_tokens=None)
    seen = [e for e in rows if e.task != "typo"]
    typo = [e for e in rows if e.task == "typo"]
    out = predict(model_dir, seen, plan).generated
    out_typo = predict(model_dir, typo, plan, fewshot_pool=pool, fewshot_k=5).generated if typo else []
    scores: dict[str, float] = {}
    for examples, outputs in ((seen, out), (typo, out_typo)):
        if not examples:
            continue
        rep = score_system_outputs(examples, {"neko": outputs}, n_boot=0)
        for task, t in rep["tasks"].items():
            sysd = t["systems"]
            key = "bleu" if "bleu" in sysd["neko"] else "wer"
            scores[task] = round(sysd["neko"][key] * (1 if key == "bleu" else 100), 2)
            scores[f"{task}_1best"] = round(sysd["1best"][key] * (1 if key == "bleu" else 100), 2)
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="full,frozen")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--dev-rows", type=int, default=24)
    ap.add_argument("--base", default="smollm2")
    ap.add_argument("--work", default="runs/bench_train_choices")
    ap.add_argument("--out", default="runs/bench_train_choices/results.jsonl")
    ap.add_argument("--list", action="store_true")
    ap.add_argument(
        "--reuse", action="store_true", help="Score an already trained variant instead of training it."
    )
    ap.add_argument(
        "--speed-only",
        action="store_true",
        help="Only tokens/s: train --steps steps per variant (after one warm-up step), no dev decode.",
    )
    args = ap.parse_args()
    if args.list:
        for k, v in VARIANTS.items():
            print(k, v)
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.variants.split(","):
        model_dir = Path(args.work) / f"{name}_{args.steps}"
        if args.reuse and (model_dir / "neko_train.json").is_file():
            done = json.loads((model_dir / "neko_train.json").read_text())
            rec = {
                "variant": name,
                "steps": args.steps,
                "train_s": round(done.get("elapsed_s", 0), 1),
                "tokens_per_s": round(done.get("tokens_per_s", 0), 1),
                "tokens": done.get("tokens"),
            }
        else:
            rec = {
                "variant": name,
                "steps": args.steps,
                **train_variant(name, args.steps, model_dir, args.base),
            }
        rec["dev"] = {} if args.speed_only else dev_scores(model_dir, args.dev_rows, args.base)
        rows.append(rec)
        with out.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)
    tasks = sorted({k for r in rows for k in r["dev"] if not k.endswith("_1best")})
    print("| variant | steps | tokens/s | train s | " + " | ".join(tasks) + " |")
    print("|---" * (4 + len(tasks)) + "|")
    print("| 1-best | | | | " + " | ".join(str(rows[0]["dev"].get(f"{t}_1best", "")) for t in tasks) + " |")
    for r in rows:
        cells = " | ".join(str(r["dev"].get(t, "")) for t in tasks)
        print(f"| {r['variant']} | {r['steps']} | {r['tokens_per_s']} | {r['train_s']} | {cells} |")


if __name__ == "__main__":
    main()
