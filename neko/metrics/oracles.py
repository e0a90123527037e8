"""Upper bounds of N-best correction: the N-best oracle and the compositional oracle (HyPoradise).

- N-best oracle (o_nb): every utterance picks its best hypothesis (fewest word errors after
  normalization; ties go to the earlier, higher-ranked one); the corpus WER of those picks. What a
  perfect re-ranker would reach.
- Compositional oracle (o_cp): the share of reference words (after normalization) that appear in
  no hypothesis of the list. Token equality, never substring tests ("cat" is not found in
  "cats"); a reference word counts as covered if any hypothesis contains that token anywhere
  (a set test, position-free). What a corrector that only reuses hypothesis words could at best
  reach; it needs no alignment. Reported in the ``wer`` field so both oracles read alike.
- For BLEU tasks, :func:`nbest_oracle_bleu` picks the hypothesis with the highest sentence BLEU and
  scores the picks with corpus BLEU.

References empty after normalization are dropped and counted, exactly as in :mod:`neko.metrics.wer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

from neko.metrics.bleu import corpus_bleu, sentence_bleu_from_stats, sentence_stats
from neko.metrics.normalizers import DEFAULT_NORMALIZER, Normalizer, get_normalizer
from neko.metrics.wer import IGNORED_REFERENCES, WerResult, corpus_wer, word_errors
from neko.schema import is_unk

__all__ = [
    "OracleResult",
    "CompositionalOracleResult",
    "nbest_oracle_wer",
    "nbest_oracle_choice",
    "compositional_oracle",
    "nbest_oracle_bleu",
]


@dataclass(frozen=True)
class OracleResult:
    """N-best oracle: ``result`` scores the picked hypotheses; ``choice[i]`` is the index picked for
    input utterance i (``-1`` where the reference was dropped)."""

    wer: float
    cer: float
    mean_utt_wer: float
    n: int
    errors: int
    ref_words: int
    n_dropped_empty_ref: int
    normalizer: str
    choice: list[int] = field(repr=False, default_factory=list)
    result: WerResult | None = field(repr=False, default=None)

    def to_dict(self) -> dict:
        # not asdict: it would deep-copy ``choice`` and ``result`` only for us to drop them
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("choice", "result")}


@dataclass(frozen=True)
class CompositionalOracleResult:
    """wer: missing / ref_words, the share of reference words found in no hypothesis."""

    wer: float
    missing: int
    ref_words: int
    n: int
    n_dropped_empty_ref: int
    normalizer: str

    def to_dict(self) -> dict:
        return asdict(self)


def _as_lists(refs: Sequence[str], nbests: Sequence[Sequence[str] | str]) -> list[list[str]]:
    if len(refs) != len(nbests):
        raise ValueError(f"got {len(refs)} references but {len(nbests)} N-best lists; they must pair up")
    out = []
    for i, nb in enumerate(nbests):
        hyps = [nb] if isinstance(nb, str) else list(nb)
        if not hyps:
            raise ValueError(f"N-best list #{i} is empty; every utterance needs at least one hypothesis")
        # HyPoradise's "<UNK>" placeholder stands for an empty hypothesis (basic/none normalizers
        # would otherwise score it as the word "unk")
        out.append(["" if h is None or is_unk(h) else h for h in hyps])
    return out


def nbest_oracle_choice(
    refs: Sequence[str],
    nbests: Sequence[Sequence[str] | str],
    normalizer: str | Normalizer | None = DEFAULT_NORMALIZER,
) -> list[int]:
    """For each utterance the index of its hypothesis with the fewest word errors (first on ties;
    ``-1`` where the reference is empty after normalization)."""
    return _choice(refs, _as_lists(refs, nbests), get_normalizer(normalizer))


def _choice(refs: Sequence[str], lists: list[list[str]], norm: Normalizer) -> list[int]:
    choice = []
    for ref, hyps in zip(refs, lists, strict=True):
        r = norm.words(ref if ref is not None else "")
        if not r or " ".join(r) in IGNORED_REFERENCES:
            choice.append(-1)
            continue
        errs = word_errors([r] * len(hyps), [norm.words(h) for h in hyps])
        choice.append(min(range(len(errs)), key=errs.__getitem__))
    return choice


def nbest_oracle_wer(
    refs: Sequence[str],
    nbests: Sequence[Sequence[str] | str],
    normalizer: str | Normalizer | None = DEFAULT_NORMALIZER,
) -> OracleResult:
    """Corpus WER when each utterance picks its best hypothesis (o_nb)."""
    norm = get_normalizer(normalizer)
    lists = _as_lists(refs, nbests)
    choice = _choice(refs, lists, norm)
    picks = [hyps[c] if c >= 0 else "" for hyps, c in zip(lists, choice, strict=True)]
    res = corpus_wer(refs, picks, norm)
    return OracleResult(
        wer=res.wer,
        cer=res.cer,
        mean_utt_wer=res.mean_utt_wer,
        n=res.n,
        errors=res.errors,
        ref_words=res.ref_words,
        n_dropped_empty_ref=res.n_dropped_empty_ref,
        normalizer=norm.name,
        choice=choice,
        result=res,
    )


def compositional_oracle(
    refs: Sequence[str],
    nbests: Sequence[Sequence[str] | str],
    normalizer: str | Normalizer | None = DEFAULT_NORMALIZER,
) -> CompositionalOracleResult:
    """Share of reference words that appear in no hypothesis (o_cp), token-exact after normalization."""
    norm = get_normalizer(normalizer)
    lists = _as_lists(refs, nbests)
    missing = ref_words = n = dropped = 0
    for ref, hyps in zip(refs, lists, strict=True):
        r = norm.words(ref if ref is not None else "")
        if not r or " ".join(r) in IGNORED_REFERENCES:
            dropped += 1
            continue
        vocab: set[str] = set()
        for h in hyps:
            vocab.update(norm.words(h))
        missing += sum(1 for w in r if w not in vocab)
        ref_words += len(r)
        n += 1
    if not n:
        raise ValueError(
            f"no reference left to score: all {len(refs)} references are empty after the {norm.name!r} normalizer"
        )
    return CompositionalOracleResult(
        wer=missing / ref_words,
        missing=missing,
        ref_words=ref_words,
        n=n,
        n_dropped_empty_ref=dropped,
        normalizer=norm.name,
    )


def nbest_oracle_bleu(refs: Sequence[str], nbests: Sequence[Sequence[str] | str], tokenize: str = "13a"):
    """Corpus BLEU when each segment picks its hypothesis with the best sentence BLEU (first on ties).

    Returns ``(BleuResult, choice)``.
    """
    lists = _as_lists(refs, nbests)
    flat_refs = [r for r, hyps in zip(refs, lists, strict=True) for _ in hyps]
    flat_hyps = [h for hyps in lists for h in hyps]
    scores = sentence_bleu_from_stats(sentence_stats(flat_refs, flat_hyps, tokenize))
    choice, k = [], 0
    for hyps in lists:
        seg = scores[k : k + len(hyps)]
        choice.append(max(range(len(seg)), key=seg.__getitem__))
        k += len(hyps)
    picks = [hyps[c] for hyps, c in zip(lists, choice, strict=True)]
    return corpus_bleu(refs, picks, tokenize), choice
