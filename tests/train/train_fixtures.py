"""Helpers for training tests: small deterministic neko rows (importable; conftest holds the fixtures)."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had "
    "by word but not what all were we when your can said there use each which she do how their if will"
).split()


def make_rows(n: int, seed: int = 0, tasks=("asr", "ocr", "tec-grammar")) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        ref = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
        if task in ("asr", "mt"):
            hyps = [
                " ".join(w if rng.random() > 0.2 else rng.choice(WORDS) for w in ref.split())
                for _ in range(3)
            ]
            row = {"id": f"{task}-{i}", "task": task, "input": hyps, "output": ref}
            if task == "mt":
                row.update(source_lang="English", target_lang="English")
        else:
            noisy = " ".join(w if rng.random() > 0.2 else rng.choice(WORDS) for w in ref.split())
            row = {"id": f"{task}-{i}", "task": task, "input": noisy, "output": ref}
        rows.append(row)
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    from neko.schema import write_jsonl

    write_jsonl(rows, path)
    return path


def per_example_losses(loss, mask, seq_ids) -> list[list[float]]:
    """Mean answer-token loss of each example of each row (row-major, in packing order)."""
    out: list[list[float]] = []
    for b in range(loss.shape[0]):
        row = []
        n = int(seq_ids[b].max()) + 1
        for s in range(n):
            m = mask[b] & (seq_ids[b] == s)
            row.append(float(loss[b][m].sum() / m.sum().clamp(min=1)))
        out.append(row)
    return out
