"""Score systems per task with the task's metric, next to the baselines and oracles a reviewer expects.

For each task (its metric from the ``neko.tasks`` registry):
- ``wer`` tasks: corpus WER and CER after the named normalizer, per-utterance mean WER, S/D/I;
  ``bleu`` tasks: sacrebleu corpus BLEU with its signature.
- Baseline columns: ``1best`` (hypothesis index 0 / the uncorrected text) always, as the floor
  every system is compared with; ``rover`` (N-best vote) where the input is an N-best list.
- Oracles where the input is an N-best list: N-best oracle (best hypothesis per utterance) and
  compositional oracle (share of reference words found in no hypothesis).
- Against the 1-best: harm rate, wins/losses/ties per utterance, and a paired bootstrap CI and
  p-value of the difference; every system also gets a bootstrap CI of its own score. All CIs of a
  task share one seeded set of resamples.

With ``group_by`` (``neko eval --by voice``) each task is also scored per value of that ``meta``
key (voice, noise level, pivot language), the per-domain breakdown HyPoradise-style papers report.

``scoring`` (:mod:`neko.eval.scoring`) names the WER convention: ``corpus`` (default) or
``hyporadise`` (text as written, per-utterance WER averaged), the one the HyPoradise tables use. It
decides the headline number of WER tasks (``headline`` in each task: ``wer`` or ``mean_utt_wer``)
and what the CIs and paired differences are computed for; both numbers are always in the report.

The report is a plain JSON-able dict (rates are fractions, BLEU is 0-100) that names the scoring,
normalizer, BLEU tokenizer and bootstrap settings; :func:`print_report` renders it with rich.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from neko.eval.baselines import BASELINES, rover_vote
from neko.eval.predictions import ScoredRow
from neko.eval.scoring import DEFAULT_SCORING, get_scoring, resolve_normalizer
from neko.io import atomic_write_json
from neko.metrics._parallel import gc_paused, parallel_map
from neko.metrics.bleu import DEFAULT_TOKENIZE, corpus_bleu
from neko.metrics.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_N_BOOT,
    bleu_from_sums,
    bootstrap_systems,
    compare_to_baseline,
    paired_bootstrap,
    utt_mean_stats,
    wer_from_sums,
    wer_stats,
)
from neko.metrics.normalizers import Normalizer, get_normalizer, precompute
from neko.metrics.oracles import compositional_oracle, nbest_oracle_bleu, nbest_oracle_wer
from neko.metrics.wer import corpus_wer
from neko.schema import Example, example_from_dict
from neko.tasks import REGISTRY, TaskRegistry

__all__ = ["ScoreConfig", "score_rows", "print_report", "write_report", "FLOOR"]

FLOOR = "1best"


@dataclass(frozen=True)
class ScoreConfig:
    """How ``score_rows`` scores.

    normalizer: text normalizer for WER/CER and the compositional oracle (named in the report);
        None: the scoring's own (``none`` for ``hyporadise``), else ``whisper``.
    scoring: ``corpus`` or ``hyporadise`` (:mod:`neko.eval.scoring`): the headline WER of WER tasks.
    bleu_tokenize: sacrebleu tokenizer for BLEU tasks.
    baselines: baseline systems to add (``1best`` is always added: it is the floor).
    oracles: compute N-best and compositional oracles for N-best inputs.
    n_boot / seed / level: bootstrap resamples, RNG seed, confidence level (0 resamples: no CIs).
    group_by: a ``meta`` key (e.g. ``voice``, ``noise``): each task is also scored per value of it,
        under ``groups`` (rows without the key form the group ``"(none)"``). Several keys separated
        by commas (``recognizer,condition``) group by their values joined with " / ".
    per_utterance: add ``ids`` (the scored rows, in order) to each task and ``per_utt`` (WER per
        utterance, or sentence BLEU) to each system, for error analysis.
    pairs: (a, b) system pairs to compare head to head: each task gets ``pairs["a vs b"]``, the paired
        bootstrap of metric(a) - metric(b) on the same utterances (e.g. NeKo vs plain MoE).
    """

    normalizer: str | None = None
    scoring: str = DEFAULT_SCORING
    bleu_tokenize: str = DEFAULT_TOKENIZE
    baselines: tuple[str, ...] = ("1best", "rover")
    oracles: bool = True
    n_boot: int = DEFAULT_N_BOOT
    seed: int = 0
    level: float = DEFAULT_LEVEL
    group_by: str | None = None
    per_utterance: bool = False
    pairs: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise ValueError(f"unknown baseline(s) {bad}; choose from {', '.join(BASELINES)}")
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be >= 0, got {self.n_boot}")
        get_normalizer(self.normalizer_name)  # fail early with did-you-mean (scoring checked too)

    @property
    def normalizer_name(self) -> str:
        """The normalizer actually used: the scoring's own, else ``normalizer``, else the default."""
        return resolve_normalizer(self.scoring, self.normalizer)

    @property
    def headline(self) -> str:
        """The WER result field reported first: ``wer`` (corpus) or ``mean_utt_wer``."""
        return get_scoring(self.scoring).headline


def _as_scored(rows: Iterable[ScoredRow | Example | dict]) -> list[ScoredRow]:
    out = []
    for i, r in enumerate(rows):
        if isinstance(r, ScoredRow):
            out.append(r)
        elif isinstance(r, dict):
            if not isinstance(r.get("prediction"), str) and not isinstance(r.get("predictions"), dict):
                raise ValueError(
                    f"row #{i}: needs a 'prediction' string (or a 'predictions' dict of system -> text)"
                )
            preds = dict(r["predictions"]) if isinstance(r.get("predictions"), dict) else {}
            if isinstance(r.get("prediction"), str):
                preds.setdefault("prediction", r["prediction"])
            out.append(ScoredRow(example_from_dict(r, line=i + 1), preds))
        elif isinstance(r, Example):
            out.append(ScoredRow(r, {}))
        else:
            raise TypeError(f"row #{i}: expected a ScoredRow, an Example or a dict, got {type(r).__name__}")
    return out


def _task_metric(task: str, registry: TaskRegistry | None) -> str:
    reg = registry or REGISTRY
    try:
        return reg.get(task).metric
    except KeyError as e:
        raise ValueError(str(e).strip("\"'")) from None


def _wer_entry(res, ci) -> dict[str, Any]:
    d = res.to_dict()
    if ci is not None:
        d["ci"] = {"low": ci.low, "high": ci.high}
    return d


def _bleu_entry(res, ci) -> dict[str, Any]:
    d = res.to_dict()
    d["bleu"] = d.pop("score")
    if ci is not None:
        d["ci"] = {"low": ci.low, "high": ci.high}
    return d


@dataclass(frozen=True)
class _TaskInputs:
    """What one task (or one group of it) is scored on: rows, references, each system's and each
    baseline's text per row, and the normalizer with all of it normalized up front."""

    examples: list[Example]
    refs: list[str]
    outputs: dict[str, list[str]]
    is_nbest: bool
    norm: Normalizer

    def subset(self, idx: list[int]) -> _TaskInputs:
        """The rows ``idx`` (a group): same texts, same normalizations, nothing computed again."""
        examples = [self.examples[i] for i in idx]
        is_nbest = any(e.is_nbest for e in examples)
        outputs = {
            name: [texts[i] for i in idx]
            for name, texts in self.outputs.items()
            if is_nbest or name != "rover"  # no vote where the group has no N-best list
        }
        return _TaskInputs(examples, [self.refs[i] for i in idx], outputs, is_nbest, self.norm)


def _rover_votes(examples: list[Example]) -> list[str]:
    """ROVER of each row, voted once per distinct N-best list (on all cores for many lists)."""
    lists = [tuple(e.hypotheses) for e in examples]
    distinct = list(dict.fromkeys(lists))
    votes = dict(zip(distinct, parallel_map(rover_vote, distinct), strict=True))
    return [votes[hyps] for hyps in lists]


def _task_inputs(
    task: str, metric: str, rows: list[ScoredRow], systems: list[str], cfg: ScoreConfig
) -> _TaskInputs:
    examples = [r.example for r in rows]
    for e in examples:
        if e.output is None:
            raise ValueError(f"task {task!r}: row id {e.id!r} has no reference ('output'); pass --ref R")
    refs = [e.output for e in examples]
    is_nbest = any(e.is_nbest for e in examples)
    outputs: dict[str, list[str]] = {name: [r.predictions[name] for r in rows] for name in systems}
    for b in (FLOOR, *cfg.baselines):
        if b == "rover" and not is_nbest:
            continue
        if b not in outputs:
            outputs[b] = _rover_votes(examples) if b == "rover" else [BASELINES[b](e) for e in examples]
    name = cfg.normalizer_name
    if metric == "wer" or is_nbest:
        # every distinct string of the task normalized once: refs, systems, baselines, all hypotheses
        texts = [*refs, *(t for hyps in outputs.values() for t in hyps)]
        if is_nbest:
            texts += [h for e in examples for h in e.hypotheses]
        norm = precompute(name, texts)
    else:
        norm = get_normalizer(name)
    return _TaskInputs(examples, refs, outputs, is_nbest, norm)


def _score_task(inputs: _TaskInputs, metric: str, cfg: ScoreConfig) -> dict:
    examples, refs, outputs, norm = inputs.examples, inputs.refs, inputs.outputs, inputs.norm
    entry: dict[str, Any] = {
        "metric": metric,
        "headline": cfg.headline if metric == "wer" else "bleu",
        "rows": len(examples),
        "nbest": inputs.is_nbest,
        "systems": {},
        "vs_1best": {},
    }
    if inputs.is_nbest:
        sizes = [len(e.hypotheses) for e in examples]
        entry["nbest_size"] = {"min": min(sizes), "mean": sum(sizes) / len(sizes), "max": max(sizes)}

    if metric == "wer":
        results = {name: corpus_wer(refs, hyps, norm) for name, hyps in outputs.items()}
        # CIs and paired differences are of the headline: summed (errors, words) give the corpus WER,
        # summed (utterance WER, 1) the per-utterance mean, with the same resampling code.
        per_row = wer_stats if cfg.headline == "wer" else utt_mean_stats
        stats = {name: per_row(r) for name, r in results.items()}
        entry["n_scored"] = results[FLOOR].n
        entry["n_dropped_empty_ref"] = results[FLOOR].n_dropped_empty_ref
    else:
        results = {name: corpus_bleu(refs, hyps, cfg.bleu_tokenize) for name, hyps in outputs.items()}
        stats = {name: r.stats for name, r in results.items()}
        entry["n_scored"] = len(refs)
        entry["n_dropped_empty_ref"] = 0
        entry["signature"] = results[FLOOR].signature
    _add_comparisons(entry, results, stats, metric, cfg)
    if cfg.per_utterance:
        kept = results[FLOOR].kept if metric == "wer" else range(len(examples))
        entry["ids"] = [examples[i].id for i in kept]
        for name, res in results.items():
            entry["systems"][name]["per_utt"] = list(res.per_utt)
    if cfg.oracles and inputs.is_nbest:
        entry["oracles"] = _oracles(refs, [e.hypotheses for e in examples], norm, metric, cfg)
    return entry


def _add_comparisons(entry: dict, results: dict, stats: dict, metric: str, cfg: ScoreConfig) -> None:
    """Each system's score and CI, and against the 1-best: harm, wins/losses, paired bootstrap."""
    sums_metric, make, higher = (
        (wer_from_sums, _wer_entry, False) if metric == "wer" else (bleu_from_sums, _bleu_entry, True)
    )
    cis, paired = ({}, {})
    if cfg.n_boot > 0:
        cis, paired = bootstrap_systems(
            stats, sums_metric, baseline=FLOOR, n_boot=cfg.n_boot, seed=cfg.seed, level=cfg.level
        )
    for a, b in cfg.pairs:
        if cfg.n_boot > 0 and a in stats and b in stats:
            pr = paired_bootstrap(
                stats[a], stats[b], sums_metric, n_boot=cfg.n_boot, seed=cfg.seed, level=cfg.level
            )
            entry.setdefault("pairs", {})[f"{a} vs {b}"] = asdict(pr)
    for name, res in results.items():
        entry["systems"][name] = make(res, cis.get(name))
        if name != FLOOR:
            harm = compare_to_baseline(res.per_utt, results[FLOOR].per_utt, higher_is_better=higher)
            cmp = {"harm": harm.to_dict()}
            if name in paired:
                cmp["paired"] = asdict(paired[name])
            entry["vs_1best"][name] = cmp


def _oracles(
    refs: list[str], nbests: list[list[str]], norm: Normalizer, metric: str, cfg: ScoreConfig
) -> dict:
    comp = compositional_oracle(refs, nbests, norm).to_dict()
    if metric == "wer":
        return {"nbest": nbest_oracle_wer(refs, nbests, norm).to_dict(), "compositional": comp}
    ob, _ = nbest_oracle_bleu(refs, nbests, cfg.bleu_tokenize)
    return {"nbest": {"bleu": ob.score, "n": ob.n}, "compositional": comp}


def score_rows(
    rows: Iterable[ScoredRow | Example | dict],
    config: ScoreConfig | None = None,
    *,
    registry: TaskRegistry | None = None,
) -> dict[str, Any]:
    """Score prediction rows per task (see the module docstring); returns the report dict.

    ``rows``: :class:`ScoredRow` (from :func:`neko.eval.predictions.load_predictions`), neko-row
    dicts with a ``prediction`` (system ``prediction``), or plain Examples (baselines only).
    """
    cfg = config or ScoreConfig()
    scored = _as_scored(rows)
    if not scored:
        raise ValueError("nothing to score: no rows")
    systems = list(scored[0].predictions)
    for r in scored:
        if list(r.predictions) != systems:
            raise ValueError(f"row id {r.example.id!r} has systems {list(r.predictions)}, expected {systems}")
    clash = [s for s in systems if s in BASELINES]
    if clash:
        raise ValueError(f"system name(s) {clash} clash with baseline names; rename them (NAME=PATH)")
    by_task: dict[str, list[ScoredRow]] = {}
    for r in scored:
        by_task.setdefault(r.example.task, []).append(r)
    norm = get_normalizer(cfg.normalizer_name)
    report: dict[str, Any] = {
        "scoring": get_scoring(cfg.scoring).to_dict(),
        "normalizer": norm.to_dict(),
        "bleu_tokenize": cfg.bleu_tokenize,
        "bootstrap": {"n_boot": cfg.n_boot, "seed": cfg.seed, "level": cfg.level},
        "systems": systems,
        "baselines": [FLOOR, *[b for b in cfg.baselines if b != FLOOR]],
        "rows": len(scored),
        "tasks": {},
    }
    with gc_paused():
        for task in sorted(by_task):
            metric = _task_metric(task, registry)
            try:
                inputs = _task_inputs(task, metric, by_task[task], systems, cfg)
                report["tasks"][task] = _score_task(inputs, metric, cfg)
            except ValueError as e:
                msg = str(e)
                raise ValueError(msg if msg.startswith("task ") else f"task {task!r}: {msg}") from None
            if cfg.group_by:
                report["tasks"][task]["groups"] = _score_groups(inputs, metric, cfg)
    if cfg.group_by:
        report["group_by"] = cfg.group_by
    return report


def _score_groups(inputs: _TaskInputs, metric: str, cfg: ScoreConfig) -> dict:
    groups: dict[str, list[int]] = {}
    keys = [k.strip() for k in (cfg.group_by or "").split(",") if k.strip()]
    for i, e in enumerate(inputs.examples):
        meta = e.meta if isinstance(e.meta, dict) else {}
        values = [meta.get(k) for k in keys]
        label = " / ".join("(none)" if v is None else str(v) for v in values)
        groups.setdefault(label, []).append(i)
    sub = replace(cfg, group_by=None)
    out = {}
    for value in sorted(groups):
        try:
            out[value] = _score_task(inputs.subset(groups[value]), metric, sub)
        except ValueError as e:  # e.g. every reference of the group empty after normalization
            out[value] = {"error": str(e), "rows": len(groups[value])}
    return out


def write_report(report: dict, path: str | Path) -> Path:
    """Write the report as JSON, atomically."""
    return atomic_write_json(path, report)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def print_report(report: dict, console=None) -> None:
    """One rich table per task: systems, baselines and oracles, with CIs and comparisons to the 1-best."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    norm = report["normalizer"]
    scoring = report.get("scoring") or get_scoring().to_dict()
    level = int(round(100 * report["bootstrap"]["level"]))
    for task, t in report["tasks"].items():
        wer = t["metric"] == "wer"
        head = t.get("headline", "wer" if wer else "bleu")
        other = "mean_utt_wer" if head == "wer" else "wer"  # the WER not in the headline
        scale = 100.0 if wer else 1.0  # WER is stored as a fraction, BLEU on 0-100
        title = f"{task}: {t['metric'].upper()}, {t['n_scored']} scored of {t['rows']} rows"
        table = Table(title=title, title_justify="left", pad_edge=False)
        table.add_column("system", no_wrap=True)
        wer_title = "WER %" if head == "wer" else "utt-mean WER %"
        table.add_column(wer_title if wer else "BLEU", justify="right", no_wrap=True)
        table.add_column(f"{level}% CI", justify="right", no_wrap=True)
        if wer:
            table.add_column("CER %", justify="right", no_wrap=True)
            table.add_column("utt-mean" if head == "wer" else "corpus", justify="right", no_wrap=True)
        table.add_column(f"Δ vs 1best [{level}% CI]", justify="right", no_wrap=True)
        table.add_column("p", justify="right", no_wrap=True)
        table.add_column("harm %", justify="right", no_wrap=True)
        table.add_column("W/L", justify="right", no_wrap=True)
        for name, s in t["systems"].items():
            ci = s.get("ci")
            cmp = t["vs_1best"].get(name, {})
            pr, harm = cmp.get("paired"), cmp.get("harm")
            score = s[head]
            cells = [
                f"{scale * score:.2f}",
                f"{scale * ci['low']:.2f}-{scale * ci['high']:.2f}" if ci else "-",
            ]
            if wer:
                cells += [_pct(s["cer"]), _pct(s[other])]
            if pr:
                cells.append(
                    f"{scale * pr['delta']:+.2f} [{scale * pr['low']:+.2f}, {scale * pr['high']:+.2f}]"
                )
                cells.append(f"{pr['p_value']:.3f}")
            else:
                cells += ["-" if name != FLOOR else "(floor)", "-"]
            cells += [
                _pct(harm["harm_rate"]) if harm else "-",
                f"{harm['wins']}/{harm['losses']}" if harm else "-",
            ]
            table.add_row(name, *cells)
        oracles = t.get("oracles")
        if oracles:
            rest = ["-"] * (7 if wer else 5)
            nb = oracles["nbest"]
            if wer:
                table.add_row(
                    "oracle N-best",
                    _pct(nb[head]),
                    "-",
                    _pct(nb["cer"]),
                    _pct(nb[other]),
                    *rest[3:],
                )
            else:
                table.add_row("oracle N-best", f"{nb['bleu']:.2f}", *rest)
            table.add_row("oracle compositional*", _pct(oracles["compositional"]["wer"]), *rest)
        notes = [f"scoring: {scoring['name']}" if wer else "", f"normalizer: {norm['name']}"]
        notes = [n for n in notes if n]
        if t.get("n_dropped_empty_ref"):
            notes.append(
                f"{t['n_dropped_empty_ref']} rows with an empty reference dropped (as the Open ASR Leaderboard)"
            )
        if t.get("signature"):
            notes.append(f"sacrebleu {t['signature']}")
        if oracles:
            notes.append("*% of reference words in no hypothesis")
        table.caption = "; ".join(notes)
        table.caption_justify = "left"
        console.print(table)
        if t.get("groups"):
            console.print(_group_table(task, t, report.get("group_by", "group")))
    console.print(f"[dim]scoring {scoring['name']}: {scoring['description']}[/dim]")
    console.print(f"[dim]normalizer {norm['name']}: {norm['description']}[/dim]")


def _group_table(task: str, t: dict, key: str):
    """Per-group scores of one task: one row per ``meta[key]`` value, one column per system."""
    from rich.table import Table

    wer = t["metric"] == "wer"
    head = t.get("headline", "wer" if wer else "bleu")
    names = list(t["systems"])
    label = ("WER %" if head == "wer" else "utt-mean WER %") if wer else "BLEU"
    table = Table(title=f"{task} by {key}: {label}", title_justify="left", pad_edge=False)
    table.add_column(key, no_wrap=True)
    table.add_column("rows", justify="right")
    for n in names:
        table.add_column(n, justify="right", no_wrap=True)
    if t.get("oracles"):
        table.add_column("oracle N-best", justify="right", no_wrap=True)
    for value, g in t["groups"].items():
        if "error" in g:
            table.add_row(value, str(g["rows"]), *(["-"] * (len(names) + bool(t.get("oracles")))))
            continue
        cells = []
        for n in names:
            s = g["systems"].get(n)
            cells.append("-" if s is None else (_pct(s[head]) if wer else f"{s['bleu']:.2f}"))
        if t.get("oracles"):
            o = (g.get("oracles") or {}).get("nbest")
            cells.append("-" if o is None else (_pct(o[head]) if wer else f"{o['bleu']:.2f}"))
        table.add_row(value, str(g["rows"]), *cells)
    return table
