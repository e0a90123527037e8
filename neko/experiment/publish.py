"""Publishing results into the README: ``neko report`` and ``--readme``, never hand-copied.

A run's summary (``quickstart.json`` / ``experiment.json``) becomes a block saying where and how it
was measured (for the comparison: the ``neko experiment`` call that reproduces it) followed by its
tables; a benchmark directory becomes the benchmark's table. :func:`update_readme` pastes a block
between ``<!-- neko:NAME:start -->`` and ``<!-- neko:NAME:end -->``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from neko.experiment.config import PROFILES, ExperimentConfig
from neko.experiment.report import to_markdown
from neko.experiment.rows import asr_domain
from neko.experiment.tables import experiment_markdown
from neko.io import atomic_write_text
from neko.metrics.normalizers import get_normalizer
from neko.metrics.oracles import nbest_oracle_wer
from neko.metrics.wer import corpus_wer
from neko.schema import Example, read_jsonl

__all__ = [
    "read_results",
    "results_block",
    "command_line",
    "update_readme",
    "stats_markdown",
    "asr_domains_markdown",
]


def read_results(path: str | Path) -> dict[str, Any]:
    """The summary a ``neko quickstart`` / ``neko experiment`` run wrote; ValueError naming the file
    when it is not one."""
    fix = "pass the quickstart.json or experiment.json a finished run wrote"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a results file (not UTF-8 text, byte {e.start}); {fix}") from None
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: not a results file (not JSON: {e}); {fix}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a results file (a JSON {type(data).__name__}, not an object); {fix}")
    return data


def results_block(name: str, summary: dict[str, Any], source: str) -> str:
    """The README block for a run's summary: a line saying where and how it was measured + the tables."""
    try:
        cfg = summary.get("config") or {}
        machine = summary.get("machine") or (
            "GPU" if cfg.get("precision", "fp32") != "fp32" else "CPU (2 cores)"
        )
        # A run from before EvalPlan.dtype decoded at "auto" (fp32 on CPUs without native bf16).
        dtype = (cfg.get("eval") or {}).get("dtype")
        machine += f", decoded in {dtype}" if dtype else ""
        command = f"neko {name}" + (" --reuse-model" if cfg.get("reuse_model") else "")
        head = f"Measured on {machine} by `{command}` in {summary.get('elapsed_s', 0):.0f} s.\n\n"
        body = summary["table_markdown"]
        if name == "experiment":
            train_s = ", ".join(f"{k} {v:.0f} s" for k, v in summary.get("train_seconds", {}).items())
            decode_s = summary.get("decode_seconds") or 0
            decode = f"; decoding all outputs {decode_s:.0f} s" if decode_s else ""
            head = f"Measured on {machine} by `{command_line(cfg)}` (training: {train_s}{decode}).\n\n"
            body = experiment_markdown(summary)
        if not isinstance(body, str):
            raise TypeError(f"table_markdown is a {type(body).__name__}, not text")
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(
            f"{source}: not a complete `neko {name}` results file (missing or malformed {e}); "
            f"pass the {name}.json a finished run wrote"
        ) from None
    return head + body


def update_readme(readme: str | Path, block: str, marker: str) -> bool:
    """Replace the text between ``<!-- {marker}:start -->`` and ``<!-- {marker}:end -->``; False if absent."""
    path = Path(readme)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: README not found; pass the file to update with --readme") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory; pass the README file to update with --readme") from None
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {e.start}); pass a markdown README with --readme"
        ) from None
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(path, f"{head}{start}\n{block.strip()}\n{end}{tail}")
    return True


def command_line(config: dict[str, Any]) -> str:
    """The ``neko experiment`` call that reproduces a run (from its saved config)."""
    profile = "full" if config.get("precision", "fp32") != "fp32" else "reduced"
    default = {**asdict(ExperimentConfig()), **PROFILES[profile]}
    parts = ["neko experiment"]
    if profile == "full":
        parts.append("--profile full")
    parts.append(f"--steps {config['steps']}")
    rows = (config.get("eval") or {}).get("rows_per_task")
    if rows is not None:
        parts.append(f"--rows-per-task {rows}")
    asr = config.get("asr_rows_per_domain")
    if asr is not None and asr != default["asr_rows_per_domain"]:
        parts.append(f"--asr-rows-per-domain {asr}")
    layers = config.get("moe_layers")
    if isinstance(layers, str):
        parts.append(f"--moe-layers {layers}")
    elif layers:
        lo, hi = min(layers), max(layers)
        parts.append(
            f"--moe-layers {lo}-{hi}"
            if list(layers) == list(range(lo, hi + 1))
            else f"--moe-layers {','.join(map(str, layers))}"
        )
    if list(config.get("systems", default["systems"])) != list(default["systems"]):
        parts.append(f"--systems {','.join(config['systems'])}")
    if list(config.get("inference_top_k", default["inference_top_k"])) != list(default["inference_top_k"]):
        parts.append(f"--inference-top-k {','.join(map(str, config['inference_top_k'])) or 'none'}")
    if config.get("aux_loss", "off") != "off":
        parts.append(f"--aux-loss {config['aux_loss']}")
    if config.get("data_dir", default["data_dir"]) != default["data_dir"]:
        parts.append(f"--data-dir {config['data_dir']}")
    if config.get("base", default["base"]) != default["base"]:
        parts.append(f"--base {config['base']}")
    return " ".join(parts)


def stats_markdown(splits: dict[str, dict[str, Any]]) -> str:
    """Benchmark table from ``neko.eval.stats.dataset_stats`` per split (split -> stats): rows per
    split and task, N-best size, and on the last split the 1-best, N-best oracle and compositional
    oracle (WER % or BLEU)."""
    names = list(splits)
    last = splits[names[-1]]
    tasks = sorted({t for s in splits.values() for t in s["tasks"]})
    header = [
        "task",
        *[f"{n} rows" for n in names],
        "N-best size",
        f"{names[-1]} 1-best",
        "N-best oracle",
        "compositional oracle",
    ]
    rows = []
    for t in tasks:
        s = last["tasks"].get(t)
        cells = [t, *[str(sp["tasks"].get(t, {}).get("rows", 0)) for sp in splits.values()]]
        if s is None:
            rows.append(cells + ["–"] * 4)
            continue
        nb = s.get("nbest_size")
        cells.append(f"{nb['mean']:.1f}" if nb else "1 (text)")

        def m(d: dict | None) -> str:
            if not d:
                return "–"
            if "bleu" in d:
                return f"BLEU {d['bleu']:.2f}"
            return f"WER {100 * d['wer']:.2f}" + (
                f" / CER {100 * d['cer']:.2f}" if d.get("cer") is not None else ""
            )

        comp = s.get("oracle_compositional")
        cells += [
            m(s.get("one_best")),
            m(s.get("oracle_nbest")),
            f"{100 * comp['wer']:.2f}% missing" if comp else "–",
        ]
        rows.append(cells)
    return to_markdown(header, rows)


def asr_domains_markdown(benchmark: str | Path) -> str:
    """The benchmark's ASR rows per recognizer domain and condition (dev, test and the zero-shot
    file): rows, 1-best and N-best oracle WER %, and the share of rows whose hypotheses all agree
    after normalization (where a corrector has nothing to choose)."""
    norm = get_normalizer("whisper")
    groups: dict[tuple[str, str, str], list[Example]] = {}
    for split in ("dev", "test", "test_zeroshot"):
        path = Path(benchmark) / f"{split}.jsonl"
        if not path.exists():
            continue
        for e in read_jsonl(path):
            if e.task == "asr" and e.output:
                key = (asr_domain(e), str(e.meta.get("condition", "–")), split)
                groups.setdefault(key, []).append(e)
    header = ["domain", "condition", "split", "rows", "1-best WER", "N-best oracle WER", "hypotheses agree %"]
    rows = []
    for (dom, cond, split), exs in sorted(groups.items()):
        refs = [e.output for e in exs]
        agree = sum(len({norm(h) for h in e.hypotheses}) == 1 for e in exs)
        rows.append(
            [
                dom,
                cond,
                split,
                str(len(exs)),
                f"{100 * corpus_wer(refs, [e.one_best for e in exs]).wer:.2f}",
                f"{100 * nbest_oracle_wer(refs, [e.hypotheses for e in exs]).wer:.2f}",
                f"{100 * agree / len(exs):.0f}",
            ]
        )
    if not rows:
        return ""
    return "\n\nASR by recognizer domain and condition (Whisper normalizer, corpus WER %):\n\n" + to_markdown(
        header, rows
    )
