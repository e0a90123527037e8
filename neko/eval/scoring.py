"""Named WER scoring conventions, so every report says how its headline WER was computed.

Published WERs differ in two choices more than in anything a corrector does: the text normalizer
and how utterances are pooled. Two conventions are named here:

- ``corpus`` (default): word edits summed over the set / reference words summed over the set,
  after the named normalizer (``whisper`` unless ``--normalizer`` says otherwise). This is what the
  Open ASR Leaderboard and sclite report; long utterances weigh more.
- ``hyporadise``: the HyPoradise papers' number: text as written (normalizer ``none``: whitespace
  only, case and punctuation count) and the WER of each utterance averaged over utterances (short
  utterances weigh as much as long ones). Use it to put neko's numbers next to those tables.

Both numbers are always computed (``wer`` and ``mean_utt_wer`` in every result); the scoring only
decides which one is the headline: the number shown first, and the one bootstrap intervals and
paired differences are computed for.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass

from neko.metrics.normalizers import DEFAULT_NORMALIZER

__all__ = ["Scoring", "SCORINGS", "DEFAULT_SCORING", "get_scoring", "resolve_normalizer"]


@dataclass(frozen=True)
class Scoring:
    """name: the ``--scoring`` value. normalizer: the one this convention requires (None: any, default
    ``whisper``). headline: the result field reported first (``wer`` = corpus, ``mean_utt_wer``)."""

    name: str
    normalizer: str | None
    headline: str
    description: str

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


SCORINGS: dict[str, Scoring] = {
    "corpus": Scoring(
        "corpus",
        None,
        "wer",
        "corpus WER: word edits / reference words summed over the set, after the named normalizer "
        "(Open ASR Leaderboard, sclite)",
    ),
    "hyporadise": Scoring(
        "hyporadise",
        "none",
        "mean_utt_wer",
        "HyPoradise papers' WER: text as written (no normalizer), WER per utterance averaged over utterances",
    ),
}
DEFAULT_SCORING = "corpus"


def get_scoring(name: str | Scoring = DEFAULT_SCORING) -> Scoring:
    """The scoring called ``name``; a did-you-mean error for an unknown one."""
    if isinstance(name, Scoring):
        return name
    key = str(name).strip().lower()
    if key not in SCORINGS:
        close = difflib.get_close_matches(key, SCORINGS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown scoring {name!r}.{hint} Choose one of: {', '.join(SCORINGS)}.")
    return SCORINGS[key]


def resolve_normalizer(scoring: str | Scoring, normalizer: str | None) -> str:
    """The normalizer a run uses: the scoring's own, else the one asked for, else the default.

    Asking for another normalizer than the scoring requires is an error, not a silent override: a
    "hyporadise" number computed after the Whisper normalizer would not be the papers' number."""
    s = get_scoring(scoring)
    if s.normalizer is None:
        return normalizer or DEFAULT_NORMALIZER
    if normalizer is not None and normalizer.strip().lower() != s.normalizer:
        raise ValueError(
            f"scoring {s.name!r} scores text with normalizer {s.normalizer!r}, not {normalizer!r}; drop "
            f"--normalizer, or use --scoring corpus with --normalizer {normalizer}"
        )
    return s.normalizer
