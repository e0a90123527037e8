"""Conservative generation on dev: raw generation WER and harm per copy bias, per task.

Decodes the same seeded dev rows (``--dev-rows`` per task; the unseen typo task 5-shot, shots drawn
from dev rows that are not scored) with a trained model once per ``--biases`` value, plain
generation (no policy, no guard), and prints per task the 1-best WER, the generated WER and the share
of rows the generation made worse than the 1-best (MT: corpus BLEU). Nothing here looks at the test split.

    python bench/bench_copy_bias.py --model runs/bench_train_choices/full_60 --biases 0,1.5
    python bench/bench_copy_bias.py --model runs/quickstart/model --tasks ocr,tec-grammar --biases 0,1.5,3

bench/NOTES.md keeps the numbers with the model, machine and date.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    from neko.experiment.evaluate import load_split, subsample
    from neko.infer.correct import Corrector
    from neko.infer.options import CorrectionOptions
    from neko.metrics.bleu import corpus_bleu
    from neko.metrics.normalizers import get_normalizer
    from neko.metrics.wer import word_errors
    from neko.paths import BENCHMARK_DIR
    from neko.tasks import select_fewshot

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--biases", default="0,1.5")
    ap.add_argument("--tasks", default="ocr,tec-grammar,tec-coherence,typo")
    ap.add_argument("--dev-rows", type=int, default=80)
    ap.add_argument("--dev", type=Path, default=Path(BENCHMARK_DIR) / "dev.jsonl")
    args = ap.parse_args()

    dev = load_split(args.dev)
    tasks = args.tasks.split(",")
    rows = [r for r in subsample(dev, args.dev_rows, seed=1) if r.task in tasks]
    ids = {r.id for r in rows}
    shots = {"typo": select_fewshot([e for e in dev if e.id not in ids], 5, "typo", 0)}
    norm = get_normalizer("whisper")

    def errors(ref: str, hyp: str) -> tuple[int, int]:
        r = norm(ref).split()
        return word_errors([r], [norm(hyp).split()])[0], len(r)

    biases = [float(b) for b in args.biases.split(",")]
    table: dict[str, dict[str, str]] = {}
    for bias in biases:
        corrector = Corrector.from_pretrained(
            args.model, CorrectionOptions(mode="generate", guard="off", copy_bias=bias)
        )
        t0 = time.time()
        prepared = [corrector.prepare(r, fewshot=shots if r.task == "typo" else None) for r in rows]
        results = corrector.run(prepared)
        print(f"bias {bias}: {len(rows)} rows in {time.time() - t0:.0f} s", flush=True)
        for task in tasks:
            pairs = [(r, x) for r, x in zip(rows, results, strict=True) if r.task == task]
            if not pairs:
                continue
            if task in ("mt", "st"):  # corpus BLEU, higher is better
                refs = [r.output for r, _ in pairs]
                base = corpus_bleu(refs, [r.one_best for r, _ in pairs]).score
                gen = corpus_bleu(refs, [x.generated or "" for _, x in pairs]).score
                cell = table.setdefault(f"{task} (BLEU)", {"1-best": f"{base:.2f}"})
                cell[f"bias {bias:g}"] = f"{gen:.2f}"
                continue
            e1 = eg = n = worse = 0
            for r, x in pairs:
                a, ref_len = errors(r.output, r.one_best)
                b, _ = errors(r.output, x.generated or "")
                e1, eg, n, worse = e1 + a, eg + b, n + ref_len, worse + (b > a)
            cell = table.setdefault(task, {"1-best": f"{100 * e1 / max(n, 1):.2f}"})
            cell[f"bias {bias:g}"] = f"{100 * eg / max(n, 1):.2f} ({100 * worse / len(pairs):.0f}%)"
    cols = ["1-best"] + [f"bias {b:g}" for b in biases]
    print("\nWER (share of rows made worse than the 1-best)")
    print("| task | " + " | ".join(cols) + " |")
    print("|---" * (1 + len(cols)) + "|")
    for task, cell in table.items():
        print(f"| {task} | " + " | ".join(cell.get(c, "") for c in cols) + " |")


if __name__ == "__main__":
    main()
