"""Bootstrap confidence intervals, paired comparisons, and harm/wins/losses against the 1-best.

Design choices:
- Resample utterances (with replacement) and recompute the *corpus* metric from summed
  per-utterance sufficient statistics: (errors, reference words) for WER, sacrebleu's n-gram
  statistics for BLEU. Averaging per-utterance scores instead would bootstrap a different number
  than the one reported.
- Paired bootstrap (Koehn 2004): both systems are scored on the same resampled utterances, so the
  interval is for the *difference*, which is far tighter than two overlapping single-system CIs.
- Seeded (``numpy.random.default_rng(seed)``): the same inputs give the same interval.
- Percentile intervals; the two-sided p-value is ``2 * min(P(d <= 0), P(d >= 0))`` over the
  resampled differences (capped at 1; with ``n_boot`` samples it cannot go below ``2 / n_boot``).
- Resample counts come from ``bincount`` and statistics are summed with one matrix product per
  chunk of resamples: 1,000 resamples of 100k utterances take about a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from neko.metrics.bleu import bleu_from_stats

__all__ = [
    "BootstrapCI",
    "PairedBootstrap",
    "HarmStats",
    "bootstrap_ci",
    "paired_bootstrap",
    "wer_stats",
    "utt_mean_stats",
    "bleu_stats",
    "wer_from_sums",
    "bleu_from_sums",
    "wer_ci",
    "bleu_ci",
    "paired_wer",
    "paired_bleu",
    "compare_to_baseline",
    "bootstrap_systems",
]

DEFAULT_N_BOOT = 1000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class BootstrapCI:
    """estimate: the metric on the full set; [low, high]: percentile interval at ``level``."""

    estimate: float
    low: float
    high: float
    level: float
    n_boot: int
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedBootstrap:
    """delta = metric(a) - metric(b) on the full set, its interval, and a two-sided p-value."""

    delta: float
    low: float
    high: float
    p_value: float
    level: float
    n_boot: int
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HarmStats:
    """Per-utterance comparison of a system with its baseline (the 1-best).

    wins: utterances the system made better; losses: made worse; ties: unchanged score.
    harm_rate = losses / n (the share of utterances whose WER rose, or whose BLEU fell).
    """

    n: int
    wins: int
    losses: int
    ties: int
    harm_rate: float
    win_rate: float

    def to_dict(self) -> dict:
        return asdict(self)


def _check(level: float, n_boot: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def _resampled_sums(
    stats: Sequence[np.ndarray], n_boot: int, seed: int, max_cells: int = 4_000_000
) -> Iterator[list[np.ndarray]]:
    """Yield, chunk by chunk, the summed statistics of each array over the same resamples."""
    n = stats[0].shape[0]
    if n == 0:
        raise ValueError("cannot bootstrap an empty set")
    for s in stats:
        if s.shape[0] != n:
            raise ValueError(f"paired statistics must cover the same utterances ({s.shape[0]} vs {n})")
    mats = [np.asarray(s, dtype=np.float64).reshape(n, -1) for s in stats]
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, max_cells // n))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        idx += (np.arange(b) * n)[:, None]
        counts = np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        yield [counts @ m for m in mats]  # (b, k) each
        done += b


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(
    stats: np.ndarray,
    metric: Callable[[np.ndarray], np.ndarray],
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> BootstrapCI:
    """CI of a corpus metric. ``metric`` maps summed statistics (B, k) to scores (B,)."""
    _check(level, n_boot)
    stats = np.asarray(stats, dtype=np.float64)
    est = float(metric(stats.reshape(stats.shape[0], -1).sum(axis=0)[None])[0])
    vals = np.concatenate([metric(s[0]) for s in _resampled_sums([stats], n_boot, seed)])
    lo, hi = _interval(vals, level)
    return BootstrapCI(est, lo, hi, level, n_boot, seed)


def paired_bootstrap(
    stats_a: np.ndarray,
    stats_b: np.ndarray,
    metric: Callable[[np.ndarray], np.ndarray],
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> PairedBootstrap:
    """Paired bootstrap of metric(a) - metric(b) over the same resampled utterances."""
    _check(level, n_boot)
    a, b = np.asarray(stats_a, dtype=np.float64), np.asarray(stats_b, dtype=np.float64)
    n = a.shape[0]
    full = [metric(x.reshape(n, -1).sum(axis=0)[None])[0] for x in (a, b)]
    deltas = np.concatenate([metric(sa) - metric(sb) for sa, sb in _resampled_sums([a, b], n_boot, seed)])
    lo, hi = _interval(deltas, level)
    p = min(1.0, 2.0 * min(float(np.mean(deltas <= 0)), float(np.mean(deltas >= 0))))
    return PairedBootstrap(float(full[0] - full[1]), lo, hi, p, level, n_boot, seed)


def bootstrap_systems(
    stats: dict[str, np.ndarray],
    metric: Callable[[np.ndarray], np.ndarray],
    *,
    baseline: str | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> tuple[dict[str, BootstrapCI], dict[str, PairedBootstrap]]:
    """CIs for several systems and paired differences against ``baseline``, from one set of resamples.

    Same numbers as calling :func:`bootstrap_ci` / :func:`paired_bootstrap` per system with the same
    seed, at the cost of one resampling pass (resampling dominates the cost at 100k utterances).
    """
    _check(level, n_boot)
    names = list(stats)
    if baseline is not None and baseline not in stats:
        raise ValueError(f"baseline {baseline!r} is not among the systems {names}")
    arrays = [np.asarray(stats[k], dtype=np.float64) for k in names]
    n = arrays[0].shape[0]
    full = {
        k: float(metric(a.reshape(n, -1).sum(axis=0)[None])[0]) for k, a in zip(names, arrays, strict=True)
    }
    vals: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for sums in _resampled_sums(arrays, n_boot, seed):
        for k, sm in zip(names, sums, strict=True):
            vals[k].append(metric(sm))
    boot = {k: np.concatenate(v) for k, v in vals.items()}
    cis = {k: BootstrapCI(full[k], *_interval(boot[k], level), level, n_boot, seed) for k in names}
    paired: dict[str, PairedBootstrap] = {}
    if baseline is not None:
        for k in names:
            if k == baseline:
                continue
            d = boot[k] - boot[baseline]
            p = min(1.0, 2.0 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))
            paired[k] = PairedBootstrap(
                full[k] - full[baseline], *_interval(d, level), p, level, n_boot, seed
            )
    return cis, paired


# --- WER / BLEU adapters -------------------------------------------------------------------------


def wer_stats(result) -> np.ndarray:
    """(n, 2) array of (errors, reference words) per scored utterance of a ``WerResult``."""
    return np.column_stack([result.utt_errors, result.utt_ref_words]).astype(np.float64)


def utt_mean_stats(result) -> np.ndarray:
    """(n, 2) array of (utterance WER, 1): with :func:`wer_from_sums` the per-utterance mean WER, the
    HyPoradise papers' number, bootstrapped by the same code as the corpus WER."""
    return np.column_stack([result.per_utt, np.ones(len(result.per_utt))]).astype(np.float64)


def wer_from_sums(sums: np.ndarray) -> np.ndarray:
    return sums[:, 0] / np.maximum(sums[:, 1], 1.0)


def bleu_stats(result) -> np.ndarray:
    """Per-segment sacrebleu statistics of a ``BleuResult``."""
    if result.stats is None:
        raise ValueError("this BleuResult carries no per-segment statistics; compute it with corpus_bleu()")
    return result.stats


def bleu_from_sums(sums: np.ndarray) -> np.ndarray:
    return np.array([bleu_from_stats(row) for row in sums])


def wer_ci(
    result, *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = DEFAULT_LEVEL
) -> BootstrapCI:
    """Bootstrap CI of a ``WerResult``'s corpus WER (fraction)."""
    return bootstrap_ci(wer_stats(result), wer_from_sums, n_boot=n_boot, seed=seed, level=level)


def bleu_ci(
    result, *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = DEFAULT_LEVEL
) -> BootstrapCI:
    """Bootstrap CI of a ``BleuResult``'s corpus BLEU (0-100)."""
    return bootstrap_ci(bleu_stats(result), bleu_from_sums, n_boot=n_boot, seed=seed, level=level)


def _same_utterances(a, b) -> None:
    if list(a.kept) != list(b.kept):
        raise ValueError("the two WER results cover different utterances; score them on the same references")


def paired_wer(
    a, b, *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = DEFAULT_LEVEL
) -> PairedBootstrap:
    """Paired bootstrap of WER(a) - WER(b) (negative: a has fewer errors)."""
    _same_utterances(a, b)
    return paired_bootstrap(wer_stats(a), wer_stats(b), wer_from_sums, n_boot=n_boot, seed=seed, level=level)


def paired_bleu(
    a, b, *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = DEFAULT_LEVEL
) -> PairedBootstrap:
    """Paired bootstrap of BLEU(a) - BLEU(b) (positive: a is better)."""
    if a.n != b.n:
        raise ValueError(f"the two BLEU results cover {a.n} and {b.n} segments; score the same references")
    return paired_bootstrap(
        bleu_stats(a), bleu_stats(b), bleu_from_sums, n_boot=n_boot, seed=seed, level=level
    )


def compare_to_baseline(
    system: Sequence[float], baseline: Sequence[float], *, higher_is_better: bool = False, tol: float = 1e-12
) -> HarmStats:
    """Wins/losses/ties of per-utterance scores against the baseline's (WER: lower is better)."""
    if len(system) != len(baseline):
        raise ValueError(f"got {len(system)} system scores but {len(baseline)} baseline scores")
    s, b = np.asarray(system, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    diff = (s - b) if higher_is_better else (b - s)  # > 0: the system is better
    wins, losses = int(np.sum(diff > tol)), int(np.sum(diff < -tol))
    n = len(s)
    ties = n - wins - losses
    return HarmStats(n, wins, losses, ties, losses / n if n else 0.0, wins / n if n else 0.0)
