"""Decoding every system of the comparison on the same rows, once: outputs are cached on disk.

Plain greedy generation on every row (:data:`~neko.experiment.config.PLAIN_DECODING`: no copy bias,
no correction policy, no guard, agreeing N-best rows decoded too): the comparison scores training
methods, not the product's decoding. Each output file records the model (its training summary's
hash), the rows, the plan, the decoding settings, the top-K and the shots it was decoded with, so a
rerun (e.g. after adding a system) re-scores without re-decoding, which is most of a CPU run's
evaluation time, and never reuses outputs decoded with other settings.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console

from neko.experiment.config import PLAIN_DECODING, ExperimentConfig
from neko.experiment.evaluate import EvalPlan, predict
from neko.experiment.systems import TrainedSystems
from neko.io import atomic_write_json
from neko.schema import Example
from neko.train.export import SUMMARY_FILE

__all__ = ["DECODING", "ScoredRows", "SystemOutputs", "decode_all", "decode_seconds"]

DECODING = (
    "greedy, plain generation on every row: no copy bias, no correction policy, no guard, rows whose "
    "N-best hypotheses agree decoded too; each row's token limit from its input (1.5 x the longest "
    "hypothesis + 16 tokens); top-K routing = each model's own (NeKo's top-1/top-3 rows: that top-K)"
)


@dataclass
class ScoredRows:
    """The rows every system decodes: the seen tasks' test rows, the unseen typo task's (0- and
    5-shot, shots from ``dev``) and the zero-shot file's."""

    seen: list[Example]
    typo: list[Example]
    zeroshot: list[Example]
    dev: list[Example]


@dataclass
class SystemOutputs:
    """Outputs by name, one per row: ``seen`` (systems, then NeKo's top-K variants, then ``single``),
    ``typo`` (``{system}@0shot`` / ``{system}@5shot``) and ``zeroshot`` (systems)."""

    seen: dict[str, list[str]] = field(default_factory=dict)
    typo: dict[str, list[str]] = field(default_factory=dict)
    zeroshot: dict[str, list[str]] = field(default_factory=dict)


def decode_all(
    cfg: ExperimentConfig,
    out: Path,
    trained: TrainedSystems,
    rows: ScoredRows,
    labels: dict[str, str],
    console: Console,
) -> SystemOutputs:
    """Every system's outputs on every row set (cached per model and rows under ``out / "outputs"``)."""
    outs = SystemOutputs()
    seen, typo, zeroshot = rows.seen, rows.typo, rows.zeroshot
    for name, mdir in trained.model_dirs.items():
        console.rule(f"correct with {labels[name]}")
        outs.seen[name] = _predict_cached(out, name, mdir, seen, cfg.eval)
        if typo:
            outs.typo[f"{name}@0shot"] = _predict_cached(out, f"{name}@typo-0shot", mdir, typo, cfg.eval)
            outs.typo[f"{name}@5shot"] = _predict_cached(
                out, f"{name}@typo-5shot", mdir, typo, cfg.eval, fewshot=(rows.dev, cfg.eval.fewshot_k)
            )
        if zeroshot:
            outs.zeroshot[name] = _predict_cached(out, f"{name}@zeroshot", mdir, zeroshot, cfg.eval)
        if name == "neko":
            for k in cfg.inference_top_k:
                outs.seen[f"neko_top{k}"] = _predict_cached(
                    out, f"neko_top{k}", mdir, seen, cfg.eval, top_k=k
                )
    if trained.single_dirs:
        console.rule(f"correct with {labels['single']}")
        by_task: dict[str, list[str]] = {}
        for t, mdir in trained.single_dirs.items():
            mine = [e for e in seen if e.task == t]
            by_task[t] = _predict_cached(out, f"single-{t}", mdir, mine, cfg.eval) if mine else []
        cursor = {t: iter(v) for t, v in by_task.items()}
        # Each row by its own task's model (a task without one keeps its 1-best).
        outs.seen["single"] = [next(cursor[e.task]) if e.task in cursor else e.one_best for e in seen]
    return outs


def decode_seconds(out: Path) -> float:
    """Decoding time of every output as recorded when it was decoded (cached ones included)."""
    total = 0.0
    for f in sorted((out / "outputs").glob("*.json")):
        try:
            total += float(json.loads(f.read_text(encoding="utf-8")).get("seconds", 0.0))
        except (ValueError, UnicodeDecodeError):
            continue
    return round(total, 3)


def _model_stamp(model_dir: Path) -> str:
    f = Path(model_dir) / SUMMARY_FILE
    return hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else ""


def _predict_cached(
    out: Path,
    key: str,
    model_dir: Path,
    rows: list[Example],
    plan: EvalPlan,
    *,
    top_k: int | None = None,
    fewshot: tuple[list[Example], int] | None = None,
) -> list[str]:
    """Decode once per (model, rows, plan, decoding settings, top-K, shots)."""
    want = {
        "model": _model_stamp(model_dir),
        "ids": [e.id for e in rows],
        "plan": asdict(plan),
        "top_k": top_k,
        "shots": fewshot[1] if fewshot else 0,
        "decoding": PLAIN_DECODING,
    }
    path = out / "outputs" / f"{key}.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            saved = {}
        if {k: saved.get(k) for k in want} == want and len(saved.get("outputs", [])) == len(rows):
            return saved["outputs"]
    t0 = time.time()
    pool, k = fewshot if fewshot else ((), 0)
    texts = predict(
        model_dir, rows, plan, top_k_experts=top_k, fewshot_pool=pool, fewshot_k=k, **PLAIN_DECODING
    ).final
    atomic_write_json(path, {**want, "seconds": round(time.time() - t0, 3), "outputs": texts}, indent=None)
    return texts
