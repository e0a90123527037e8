"""Corpus WER and CER after a named normalizer, with the per-utterance mean as a second number.

Design choices (each one a known way WER numbers disagree between papers):
- Corpus WER = total word edits / total reference words (what the Open ASR Leaderboard and
  sclite report). HyPoradise scripts also average per-utterance WERs; we report that mean as
  ``mean_utt_wer`` next to it, never instead of it.
- Both sides go through the same named normalizer (default ``whisper``) before scoring; the
  result records its name.
- References that are empty after normalization are dropped, as the leaderboard does (its
  ``is_target_text_in_range`` also drops TED-LIUM's "ignore time segment in scoring" marker; so
  do we). They are counted in ``n_dropped_empty_ref`` and reports say so.
- CER is computed on the normalized words joined by single spaces (spaces count as characters,
  as in jiwer's ``cer``).
- Edits come from rapidfuzz's C++ Levenshtein ``editops`` on token lists: ~1 us per utterance,
  so 100k utterances score in well under a second once normalized (``bench/bench_eval.py``).
  ``tests/metrics/test_metrics_wer.py`` checks equality with jiwer on the same normalized text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from rapidfuzz.distance import Levenshtein

from neko.metrics._parallel import gc_paused
from neko.metrics.normalizers import DEFAULT_NORMALIZER, Normalizer, get_normalizer

__all__ = [
    "WerResult",
    "corpus_wer",
    "normalize_pairs",
    "word_errors",
    "edit_counts",
    "format_pct",
    "IGNORED_REFERENCES",
]

# Reference texts that mean "do not score this segment" (after normalization).
IGNORED_REFERENCES = frozenset({"ignore time segment in scoring"})


@dataclass(frozen=True)
class WerResult:
    """Scores of one system on one set. Rates are fractions (print ``x100``, 2 decimals).

    wer: corpus WER = errors / ref_words. cer: corpus CER = char_errors / ref_chars.
    mean_utt_wer: mean of ``per_utt`` (secondary; weights short utterances up).
    n: utterances scored; n_dropped_empty_ref: utterances dropped for an empty reference.
    substitutions/deletions/insertions: the word edits (they sum to ``errors``).
    per_utt / utt_errors / utt_ref_words: per scored utterance, in input order (``kept`` = their
    input indices); used for bootstrap CIs and harm rates.
    """

    wer: float
    cer: float
    mean_utt_wer: float
    n: int
    errors: int
    ref_words: int
    char_errors: int
    ref_chars: int
    substitutions: int
    deletions: int
    insertions: int
    n_dropped_empty_ref: int
    normalizer: str
    per_utt: list[float] = field(repr=False, default_factory=list)
    utt_errors: list[int] = field(repr=False, default_factory=list)
    utt_ref_words: list[int] = field(repr=False, default_factory=list)
    kept: list[int] = field(repr=False, default_factory=list)

    def to_dict(self, *, per_utterance: bool = False) -> dict:
        skip = () if per_utterance else _PER_UTT_FIELDS
        # not dataclasses.asdict: it deep-copies the per-utterance lists only for us to drop them
        return {f.name: _copy(getattr(self, f.name)) for f in fields(self) if f.name not in skip}


_PER_UTT_FIELDS = ("per_utt", "utt_errors", "utt_ref_words", "kept")


def _copy(v):
    return list(v) if isinstance(v, list) else v


def format_pct(x: float | None) -> str:
    """A rate as a percentage with two decimals ("12.34"); ``-`` when missing."""
    return "-" if x is None else f"{100.0 * x:.2f}"


def _check_lengths(refs: Sequence[str], hyps: Sequence[str]) -> None:
    if len(refs) != len(hyps):
        raise ValueError(
            f"got {len(refs)} references but {len(hyps)} hypotheses; they must pair up one to one"
        )


def normalize_pairs(
    refs: Sequence[str], hyps: Sequence[str], normalizer: str | Normalizer | None = DEFAULT_NORMALIZER
) -> tuple[list[list[str]], list[list[str]], list[int], int]:
    """Normalize and tokenize; drop pairs whose reference is empty after normalization.

    Returns (ref token lists, hyp token lists, kept input indices, number dropped). The token lists
    may be shared with the normalizer's memo (:func:`~neko.metrics.normalizers.precompute`): read only.
    """
    _check_lengths(refs, hyps)
    norm = get_normalizer(normalizer)
    r_tok: list[list[str]] = []
    h_tok: list[list[str]] = []
    kept: list[int] = []
    for i, (r, h) in enumerate(zip(refs, hyps, strict=True)):
        if r is None:
            raise ValueError(f"reference #{i} is missing (None); every scored row needs an 'output'")
        rn = norm.words(r)
        if not rn or " ".join(rn) in IGNORED_REFERENCES:
            continue
        r_tok.append(rn)
        h_tok.append(norm.words(h if h is not None else ""))
        kept.append(i)
    return r_tok, h_tok, kept, len(refs) - len(kept)


def word_errors(ref_tokens: Sequence[Sequence[str]], hyp_tokens: Sequence[Sequence[str]]) -> list[int]:
    """Word edit distance per utterance (already normalized token lists)."""
    dist = Levenshtein.distance
    return [dist(r, h) for r, h in zip(ref_tokens, hyp_tokens, strict=True)]


def edit_counts(ref_tokens: Sequence[str], hyp_tokens: Sequence[str]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of one optimal word alignment."""
    s = d = i = 0
    for op in Levenshtein.editops(ref_tokens, hyp_tokens):
        tag = op[0]
        if tag == "replace":
            s += 1
        elif tag == "delete":
            d += 1
        else:
            i += 1
    return s, d, i


def corpus_wer(
    refs: Sequence[str],
    hyps: Sequence[str],
    normalizer: str | Normalizer | None = DEFAULT_NORMALIZER,
) -> WerResult:
    """Corpus WER/CER of ``hyps`` against ``refs`` after ``normalizer`` (see module docstring).

    Raises ValueError when the lengths differ or when no reference is left to score.
    """
    with gc_paused():
        return _corpus_wer(refs, hyps, get_normalizer(normalizer))


def _corpus_wer(refs: Sequence[str], hyps: Sequence[str], norm: Normalizer) -> WerResult:
    r_tok, h_tok, kept, dropped = normalize_pairs(refs, hyps, norm)
    if not r_tok:
        raise ValueError(
            f"no reference left to score: all {len(refs)} references are empty after the "
            f"{norm.name!r} normalizer (check the 'output' fields or pick another normalizer)"
        )
    editops = Levenshtein.editops
    cdist = Levenshtein.distance
    per_utt: list[float] = []
    utt_err: list[int] = []
    utt_len: list[int] = []
    subs = dels = ins = 0
    char_err = ref_chars = 0
    for r, h in zip(r_tok, h_tok, strict=True):
        ops = editops(r, h)
        e = len(ops)
        if e:
            tags = [op[0] for op in ops]
            s, d = tags.count("replace"), tags.count("delete")
            subs += s
            dels += d
            ins += e - s - d
        utt_err.append(e)
        utt_len.append(len(r))
        per_utt.append(e / len(r))
        rs, hs = " ".join(r), " ".join(h)
        char_err += cdist(rs, hs)
        ref_chars += len(rs)
    errors, ref_words = sum(utt_err), sum(utt_len)
    return WerResult(
        wer=errors / ref_words,
        cer=char_err / ref_chars,
        mean_utt_wer=sum(per_utt) / len(per_utt),
        n=len(r_tok),
        errors=errors,
        ref_words=ref_words,
        char_errors=char_err,
        ref_chars=ref_chars,
        substitutions=subs,
        deletions=dels,
        insertions=ins,
        n_dropped_empty_ref=dropped,
        normalizer=norm.name,
        per_utt=per_utt,
        utt_errors=utt_err,
        utt_ref_words=utt_len,
        kept=kept,
    )
