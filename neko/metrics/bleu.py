"""Corpus BLEU through sacrebleu, with its signature, per-sentence statistics and per-language tokenizers.

Design choices:
- sacrebleu does the scoring; we never re-implement BLEU. The signature
  (``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.x``) travels with every score.
- Tokenizer ``13a`` by default (what GenTranslate used for every language, zh/ja included);
  ``zh``, ``intl``, ``char`` work out of the box, ``ja-mecab``/``ko-mecab`` when their extra
  packages are installed (a clear error says how to install them otherwise).
- No text normalization: BLEU is case- and punctuation-sensitive by convention.
- Sentence-level sufficient statistics (n-gram matches/totals, lengths) are extracted once with
  sacrebleu's own code; corpus BLEU of any bootstrap resample is then sacrebleu's score of summed
  statistics (no re-tokenization), and per-sentence BLEU (effective order, exp smoothing, like
  ``sacrebleu.sentence_bleu``) comes from the same rows for harm rates and oracles.
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "BleuResult",
    "corpus_bleu",
    "sentence_stats",
    "bleu_from_stats",
    "sentence_bleu_from_stats",
    "make_bleu",
]

DEFAULT_TOKENIZE = "13a"
# Tokenizers whose Python dependencies are optional: tokenizer -> (module to import, pip extra).
_OPTIONAL = {"ja-mecab": (("MeCab", "ipadic"), "sacrebleu[ja]"), "ko-mecab": (("mecab_ko",), "sacrebleu[ko]")}


@dataclass(frozen=True)
class BleuResult:
    """Corpus BLEU (0-100, sacrebleu's scale) and how it was computed.

    per_utt: sentence BLEU per segment (effective order, exp smoothing), input order.
    stats: per-segment sufficient statistics ``(n, 2 + 2 * 4)`` for bootstrap resampling.
    """

    score: float
    signature: str
    n: int
    bp: float
    precisions: list[float]
    sys_len: int
    ref_len: int
    tokenize: str
    per_utt: list[float] = field(repr=False, default_factory=list)
    stats: np.ndarray | None = field(repr=False, default=None)

    def to_dict(self, *, per_utterance: bool = False) -> dict:
        d = {
            "score": self.score,
            "signature": self.signature,
            "n": self.n,
            "bp": self.bp,
            "precisions": list(self.precisions),
            "sys_len": self.sys_len,
            "ref_len": self.ref_len,
            "tokenize": self.tokenize,
        }
        if per_utterance:
            d["per_utt"] = list(self.per_utt)
        return d


def make_bleu(tokenize: str = DEFAULT_TOKENIZE, *, effective_order: bool = False):
    """A sacrebleu ``BLEU`` metric object, with a clear error for unknown or uninstalled tokenizers."""
    from sacrebleu.metrics import BLEU

    known = list(BLEU.TOKENIZERS)
    if tokenize not in known:
        close = difflib.get_close_matches(str(tokenize), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown BLEU tokenizer {tokenize!r}.{hint} sacrebleu knows: {', '.join(known)}.")
    if tokenize in _OPTIONAL:
        modules, extra = _OPTIONAL[tokenize]
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            raise ValueError(
                f"BLEU tokenizer {tokenize!r} needs {', '.join(missing)}, which is not installed; "
                f"run `pip install '{extra}'` or use tokenize='13a' (GenTranslate's choice for every language)"
            )
    return BLEU(tokenize=tokenize, effective_order=effective_order)


def _check(refs: Sequence[str], hyps: Sequence[str]) -> None:
    if len(refs) != len(hyps):
        raise ValueError(
            f"got {len(refs)} references but {len(hyps)} hypotheses; they must pair up one to one"
        )
    if not refs:
        raise ValueError("nothing to score: no references given")
    for i, r in enumerate(refs):
        if r is None:
            raise ValueError(f"reference #{i} is missing (None); every scored row needs an 'output'")


def sentence_stats(refs: Sequence[str], hyps: Sequence[str], tokenize: str = DEFAULT_TOKENIZE) -> np.ndarray:
    """Per-segment BLEU sufficient statistics, shape (n, 2 + 2 * max_ngram_order), int64."""
    _check(refs, hyps)
    bleu = make_bleu(tokenize)
    hyps = ["" if h is None else h for h in hyps]
    return np.asarray(bleu._extract_corpus_statistics(list(hyps), [list(refs)]), dtype=np.int64)


def bleu_from_stats(summed: np.ndarray, tokenize: str = DEFAULT_TOKENIZE) -> float:
    """Corpus BLEU from summed statistics (one row), exactly as sacrebleu's corpus BLEU computes it
    (its defaults: exp smoothing, no effective order, 4-grams). ``tokenize`` is unused: the
    statistics were tokenized when extracted; it is kept for call-site symmetry."""
    from sacrebleu.metrics.bleu import BLEU
    from sacrebleu.metrics.bleu import MAX_NGRAM_ORDER as k

    v = [int(x) for x in summed]
    return float(BLEU.compute_bleu(v[2 : 2 + k], v[2 + k :], v[0], v[1], smooth_method="exp").score)


def sentence_bleu_from_stats(stats: np.ndarray) -> list[float]:
    """Sentence BLEU per row (effective order + exp smoothing, as ``sacrebleu.sentence_bleu``)."""
    from sacrebleu.metrics import BLEU

    sent = BLEU(effective_order=True)
    return [float(sent._compute_score_from_stats([int(x) for x in row]).score) for row in stats]


def corpus_bleu(
    refs: Sequence[str],
    hyps: Sequence[str],
    tokenize: str = DEFAULT_TOKENIZE,
    *,
    sentence_scores: bool = True,
) -> BleuResult:
    """sacrebleu corpus BLEU of ``hyps`` against one reference each, with signature and sentence scores."""
    _check(refs, hyps)
    bleu = make_bleu(tokenize)
    hyps = ["" if h is None else h for h in hyps]
    stats = np.asarray(bleu._extract_corpus_statistics(list(hyps), [list(refs)]), dtype=np.int64)
    res = bleu._compute_score_from_stats([int(x) for x in stats.sum(axis=0)])
    return BleuResult(
        score=float(res.score),
        signature=str(bleu.get_signature()),
        n=len(refs),
        bp=float(res.bp),
        precisions=[float(p) for p in res.precisions],
        sys_len=int(res.sys_len),
        ref_len=int(res.ref_len),
        tokenize=tokenize,
        per_utt=sentence_bleu_from_stats(stats) if sentence_scores else [],
        stats=stats,
    )
