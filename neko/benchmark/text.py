"""Clean English references: Debian ``fortunes`` sentences and ``wordnet-base`` example phrases.

Design choices:
- A *group* is the unit of split assignment: one fortune (its sentences stay together so the
  coherence task can pair neighbouring sentences) or one WordNet example phrase. Groups are
  shuffled with the seed and dealt to train/dev/test; a sentence whose normalized form already
  belongs to an earlier split is dropped from later ones, so no reference text is in two splits.
- Cleaning keeps what a speech, OCR and grammar pipeline can all use: 6-20 words, ASCII letters
  and ordinary punctuation only (no digits: spoken numbers make WER depend on the normalizer),
  no attributions, no all-caps shouting, no code or ASCII art (those files are skipped).
- WordNet examples are lower-case fragments; they get a capital and a full stop so every reference
  reads as a sentence.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from neko.benchmark.recognizers.base import MissingToolError

__all__ = ["Group", "TextPools", "FORTUNE_DIR", "WORDNET_DIR", "load_groups", "split_groups", "norm_key"]

FORTUNE_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
# Files that are code, ASCII art, jargon lists or non-English: not sentences.
_SKIP_FORTUNES = {"art", "ascii-art", "perl", "translate-me", "debian", "linux", "linuxcookie", "definitions"}
_ALLOWED = re.compile(r"^[A-Za-z ,.;:!?'\"-]+$")
_SPLIT = re.compile(r"(?<=[.!?])[\"']?\s+(?=[\"']?[A-Z])")
MIN_WORDS, MAX_WORDS = 6, 20


@dataclass
class Group:
    source: str  # "fortunes:<file>" or "wordnet:<pos>"
    sentences: list[str] = field(default_factory=list)


def norm_key(text: str) -> str:
    """Normalized form used for de-duplication (case, punctuation and spacing ignored)."""
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def clean_sentence(s: str) -> str | None:
    """A usable reference sentence, or ``None``."""
    s = s.replace("``", '"').replace("''", '"').replace("--", " - ")
    s = " ".join(s.split()).strip(" -")
    s = s.strip('"') if s.count('"') % 2 else s
    if not s or not _ALLOWED.match(s):
        return None
    words = s.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    if sum(1 for w in words if len(w) > 1 and w.isupper()) > 1:
        return None
    if not s[0].isupper() or s[-1] not in ".!?":
        return None
    if " - " in s or s.count('"') % 2 or "'" * 2 in s:
        return None
    return s


def _fortune_groups(root: Path) -> list[Group]:
    groups: list[Group] = []
    for f in sorted(root.iterdir()):
        if not f.is_file() or f.suffix in (".dat", ".u8") or f.name in _SKIP_FORTUNES:
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        for entry in text.split("\n%\n"):
            lines = [ln for ln in entry.splitlines() if not ln.strip().startswith("--")]
            # Indented lines are verse, dialogue or quoted code: their line breaks carry meaning.
            if any(ln.startswith(("\t", "  ")) for ln in lines if ln.strip()):
                continue
            body = " ".join(ln.strip() for ln in lines)
            sents = [c for c in (clean_sentence(s) for s in _SPLIT.split(body)) if c]
            if sents:
                groups.append(Group(f"fortunes:{f.name}", sents))
    return groups


def _wordnet_groups(root: Path) -> list[Group]:
    groups: list[Group] = []
    for pos in ("noun", "verb", "adj", "adv"):
        f = root / f"data.{pos}"
        if not f.exists():
            continue
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(" ") or "|" not in line:
                continue
            gloss = line.split("|", 1)[1]
            for ex in re.findall(r'"([^"]+)"', gloss):
                ex = ex.strip().rstrip(",;:")
                if ex and ex[-1] not in ".!?":
                    ex += "."
                c = clean_sentence(ex[:1].upper() + ex[1:])
                if c:
                    groups.append(Group(f"wordnet:{pos}", [c]))
    return groups


@lru_cache(maxsize=2)
def _load_groups_cached(fortune_dir: Path, wordnet_dir: Path) -> tuple[Group, ...]:
    return tuple(_fortune_groups(fortune_dir) + _wordnet_groups(wordnet_dir))


def load_groups(fortune_dir: Path = FORTUNE_DIR, wordnet_dir: Path = WORDNET_DIR) -> list[Group]:
    """All sentence groups from the installed Debian packages (clear error when they are missing)."""
    missing = []
    if not fortune_dir.is_dir():
        missing.append("fortunes fortunes-min")
    if not (wordnet_dir / "data.noun").exists():
        missing.append("wordnet-base")
    if missing:
        raise MissingToolError(
            f"the text sources are not installed; install them with `sudo apt-get install {' '.join(missing)}` "
            "(or run `bash scripts/setup.sh`)"
        )
    return [Group(g.source, list(g.sentences)) for g in _load_groups_cached(fortune_dir, wordnet_dir)]


@dataclass
class TextPools:
    """Per split: the groups (for pairs) and a draw order of single sentences."""

    groups: dict[str, list[Group]]

    def sentences(self, split: str) -> list[tuple[str, str]]:
        """(sentence, source) in the split's shuffled order."""
        return [(s, g.source) for g in self.groups[split] for s in g.sentences]

    def pairs(self, split: str) -> list[tuple[str, str, str]]:
        """Neighbouring sentence pairs from the same fortune: (first, second, source)."""
        out = []
        for g in self.groups[split]:
            for a, b in zip(g.sentences, g.sentences[1:], strict=False):
                if len((a + " " + b).split()) <= 2 * MAX_WORDS:
                    out.append((a, b, g.source))
        return out


def split_groups(groups: list[Group], fractions: dict[str, float], seed: int) -> TextPools:
    """Deal shuffled groups to splits by ``fractions``; drop sentences already in an earlier split."""
    order = list(groups)
    random.Random(seed).shuffle(order)
    total = sum(fractions.values())
    bounds, acc = [], 0.0
    for name, frac in fractions.items():
        acc += frac / total
        bounds.append((name, round(acc * len(order))))
    seen: dict[str, str] = {}
    out: dict[str, list[Group]] = {name: [] for name in fractions}
    start = 0
    for name, end in bounds:
        for g in order[start:end]:
            kept = []
            for s in g.sentences:
                k = norm_key(s)
                if seen.setdefault(k, name) == name and k not in {norm_key(x) for x in kept}:
                    kept.append(s)
            if kept:
                out[name].append(Group(g.source, kept))
        start = end
    return TextPools(out)
