"""Released N-best sets (HyPoradise and friends) as rows of the benchmark, with a carved dev/test.

Design choices:
- A released set is real recognizer output (the shipped one: Whisper-Large on ATIS recordings), so
  it joins the benchmark as ASR rows of its own domain: ids ``asr-<name>-<split>-<n>``,
  ``meta.recognizer`` naming the recognizer and ``meta.condition`` the set, the recognizer's
  ``am_score`` kept in ``meta`` as released.
- The released *train* file is split three ways here: most rows train, ``dev`` rows tune the
  correction policy, ``test`` rows are scored. The cut is by normalized reference (the same request
  spoken twice stays on one side), from a seeded shuffle, so no dev or test reference is trained on.
- Adding a set replaces its earlier rows and leaves every other row of the build byte for byte; the
  manifest gains a ``released`` entry with its source, licence, sha256 and per-split WER.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from neko.benchmark.plan import SPLITS
from neko.benchmark.runner import refresh_manifest
from neko.benchmark.text import norm_key
from neko.data.formats import read_any
from neko.io import atomic_write_text
from neko.metrics.oracles import nbest_oracle_wer
from neko.metrics.wer import corpus_wer

__all__ = ["add_released_nbest"]


def _split_of(refs: list[str], n_dev: int, n_test: int, seed: int) -> dict[str, str]:
    keys = sorted({norm_key(r) for r in refs})
    random.Random(f"{seed}-released").shuffle(keys)
    counts: dict[str, int] = {}
    for r in refs:
        counts[norm_key(r)] = counts.get(norm_key(r), 0) + 1
    split: dict[str, str] = {}
    dev = test = 0
    for k in keys:
        if test < n_test:
            split[k], test = "test", test + counts[k]
        elif dev < n_dev:
            split[k], dev = "dev", dev + counts[k]
        else:
            split[k] = "train"
    return split


def add_released_nbest(
    src: str | Path,
    out: str | Path,
    *,
    name: str,
    recognizer: str,
    licence: str,
    n_dev: int = 200,
    n_test: int = 200,
    seed: int = 0,
    format: str | None = None,
) -> dict[str, int]:
    """Read ``src`` (any N-best format ``neko data convert`` reads), carve dev/test by reference and
    merge the rows into the build at ``out``. Returns rows per split."""
    src, out = Path(src), Path(out)
    if not name.replace("-", "").isalnum():
        raise ValueError(f"--name {name!r}: use letters, digits and '-' (it becomes part of every row id)")
    if not (out / "manifest.json").is_file():
        raise ValueError(
            f"{out}: no manifest.json; build the benchmark first (`neko data build --out {out}`)"
        )
    exs = [e for e in read_any(src, format=format, task="asr")[0] if e.output and e.is_nbest]
    if not exs:
        raise ValueError(f"{src}: no N-best row with a reference")
    where = _split_of([e.output for e in exs], n_dev, n_test, seed)
    prefix = f"asr-{name}-"
    rows: dict[str, list[str]] = {s: [] for s in SPLITS}
    kept: dict[str, list[Any]] = {s: [] for s in SPLITS}
    for e in exs:
        split = where[norm_key(e.output)]
        meta = {"split": split, "source": f"{name}:{e.id}", "recognizer": recognizer, "condition": name}
        meta.update({k: v for k, v in e.meta.items() if k in ("am_score", "score")})
        row = {
            "id": f"{prefix}{split}-{len(rows[split]):05d}",
            "task": "asr",
            "input": e.input,
            "output": e.output,
            "meta": meta,
        }
        rows[split].append(json.dumps(row, ensure_ascii=False) + "\n")
        kept[split].append(e)
    for split in SPLITS:
        path = out / f"{split}.jsonl"
        old = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.exists() else []
        old = [ln for ln in old if ln.strip() and not json.loads(ln)["id"].startswith(prefix)]
        atomic_write_text(path, "".join(old) + "".join(rows[split]))
    wer = {}
    for split, es in kept.items():
        if es:
            refs = [e.output for e in es]
            wer[split] = {
                "rows": len(es),
                "one_best_wer": round(100 * corpus_wer(refs, [e.hypotheses[0] for e in es]).wer, 2),
                "oracle_wer": round(100 * nbest_oracle_wer(refs, [e.hypotheses for e in es]).wer, 2),
            }
    entry = {
        "file": src.name,
        "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
        "recognizer": recognizer,
        "licence": licence,
        "ids": f"{prefix}<split>-<n>; dev/test carved by normalized reference (seed {seed})",
        "wer": wer,
    }
    refresh_manifest(out, lambda m: m.setdefault("released", {}).__setitem__(name, entry))
    return {s: len(r) for s, r in rows.items()}
