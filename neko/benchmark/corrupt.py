"""Rule-based corruptions of clean sentences: grammar errors, coherence errors and real typos.

Design choices:
- Each corruption is one small, named rule that makes an error a grammar checker would flag and a
  learner or a hurried writer really makes (agreement, articles, prepositions, verb forms, noun
  number, confusable words; comma splices, wrong splits, wrong or missing connectives). A row gets
  1-2 grammar edits (1-3 typos), so most of the sentence stays right and the task is correction,
  not rewriting. The rule names go into ``meta.errors``.
- A rule that finds nothing to change returns ``None``; the caller tries another rule, and a
  sentence no rule changes is not emitted (a "corrupted" row equal to its reference teaches
  nothing and inflates the baseline).
- Typos are codespell's ``wrong->right`` pairs read as data (inverted to right -> [wrongs]); only
  unambiguous entries are used, and the case of the original word is kept.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from functools import lru_cache

from neko.benchmark.recognizers.base import MissingToolError

__all__ = [
    "corrupt_grammar",
    "corrupt_coherence",
    "corrupt_typos",
    "typo_table",
    "GRAMMAR_RULES",
    "COHERENCE_RULES",
]

_WORD = re.compile(r"[A-Za-z']+")

# base, 3rd person, past, participle, -ing
_VERBS = [
    ("be", "is", "was", "been", "being"),
    ("have", "has", "had", "had", "having"),
    ("do", "does", "did", "done", "doing"),
    ("go", "goes", "went", "gone", "going"),
    ("come", "comes", "came", "come", "coming"),
    ("see", "sees", "saw", "seen", "seeing"),
    ("take", "takes", "took", "taken", "taking"),
    ("give", "gives", "gave", "given", "giving"),
    ("make", "makes", "made", "made", "making"),
    ("know", "knows", "knew", "known", "knowing"),
    ("get", "gets", "got", "gotten", "getting"),
    ("write", "writes", "wrote", "written", "writing"),
    ("eat", "eats", "ate", "eaten", "eating"),
    ("speak", "speaks", "spoke", "spoken", "speaking"),
    ("break", "breaks", "broke", "broken", "breaking"),
    ("choose", "chooses", "chose", "chosen", "choosing"),
    ("begin", "begins", "began", "begun", "beginning"),
    ("run", "runs", "ran", "run", "running"),
    ("think", "thinks", "thought", "thought", "thinking"),
    ("find", "finds", "found", "found", "finding"),
    ("tell", "tells", "told", "told", "telling"),
    ("say", "says", "said", "said", "saying"),
    ("leave", "leaves", "left", "left", "leaving"),
    ("feel", "feels", "felt", "felt", "feeling"),
    ("bring", "brings", "brought", "brought", "bringing"),
    ("buy", "buys", "bought", "bought", "buying"),
    ("teach", "teaches", "taught", "taught", "teaching"),
    ("fall", "falls", "fell", "fallen", "falling"),
    ("drive", "drives", "drove", "driven", "driving"),
    ("grow", "grows", "grew", "grown", "growing"),
    ("forget", "forgets", "forgot", "forgotten", "forgetting"),
    ("keep", "keeps", "kept", "kept", "keeping"),
    ("hold", "holds", "held", "held", "holding"),
    ("stand", "stands", "stood", "stood", "standing"),
    ("lose", "loses", "lost", "lost", "losing"),
    ("pay", "pays", "paid", "paid", "paying"),
    ("meet", "meets", "met", "met", "meeting"),
    ("sit", "sits", "sat", "sat", "sitting"),
    ("win", "wins", "won", "won", "winning"),
    ("try", "tries", "tried", "tried", "trying"),
    ("live", "lives", "lived", "lived", "living"),
    ("want", "wants", "wanted", "wanted", "wanting"),
    ("work", "works", "worked", "worked", "working"),
    ("look", "looks", "looked", "looked", "looking"),
    ("need", "needs", "needed", "needed", "needing"),
    ("seem", "seems", "seemed", "seemed", "seeming"),
    ("play", "plays", "played", "played", "playing"),
    ("use", "uses", "used", "used", "using"),
    ("believe", "believes", "believed", "believed", "believing"),
]
_FORM_OF: dict[str, tuple[str, ...]] = {}
for _v in _VERBS:
    for _f in _v:
        _FORM_OF.setdefault(_f, _v)
# Wrong forms learners actually produce for a given right form.
_VERB_SWAPS = {2: (3, 0), 3: (2, 0), 1: (0,), 0: (1, 2), 4: (0, 3)}
_AGREE = {
    "is": "are", "are": "is", "was": "were", "were": "was", "has": "have", "have": "has",
    "does": "do", "do": "does", "doesn't": "don't", "don't": "doesn't", "isn't": "aren't",
    "aren't": "isn't", "wasn't": "weren't", "weren't": "wasn't", "this": "these", "these": "this",
    "that": "those", "those": "that", "much": "many", "many": "much", "fewer": "less", "less": "fewer",
}  # fmt: skip
_PREPS = ["in", "on", "at", "to", "for", "of", "with", "from", "by", "about", "into", "over"]
_PREP_CONFUSION = {
    "in": ["on", "at", "into"], "on": ["in", "at", "over"], "at": ["in", "on", "to"], "to": ["for", "at", "into"],
    "for": ["to", "of", "since"], "of": ["from", "for", "about"], "with": ["by", "to", "of"],
    "from": ["of", "since", "by"], "by": ["with", "from", "of"], "about": ["of", "on", "for"],
    "into": ["in", "to", "inside"], "over": ["on", "above", "upon"], "since": ["from", "for"],
}  # fmt: skip
_CONFUSABLE = {
    "its": "it's", "it's": "its", "their": "there", "there": "their", "than": "then", "then": "than",
    "your": "you're", "you're": "your", "who": "which", "whom": "who", "affect": "effect",
    "lose": "loose", "whose": "who's", "too": "to", "well": "good", "fewer": "less",
}  # fmt: skip
_VOWEL_SOUND = re.compile(r"^(?:[aeio]|u(?!ni|se|ti|su|ro)|hour|honest|honou?r|heir)", re.I)
_CONNECTIVES = {
    "but": ["and", "so", "because"], "and": ["but", "so", "or"], "so": ["but", "because", "although"],
    "because": ["although", "so", "but"], "although": ["because", "so", "since"], "though": ["because", "so"],
    "however": ["therefore", "moreover", "thus"], "therefore": ["however", "nevertheless", "meanwhile"],
    "when": ["because", "unless", "although"], "if": ["because", "although", "unless"],
    "unless": ["if", "because"], "while": ["because", "so"], "since": ["although", "unless"],
    "or": ["and", "but"], "yet": ["so", "because"], "until": ["because", "since"],
}  # fmt: skip
_WRONG_LINKS = [
    "However,",
    "Therefore,",
    "Moreover,",
    "Nevertheless,",
    "In contrast,",
    "As a result,",
    "Meanwhile,",
]
_SUBORD = (
    "because",
    "although",
    "which",
    "when",
    "while",
    "if",
    "since",
    "unless",
    "who",
    "where",
    "so that",
)


def _match_case(new: str, old: str) -> str:
    if old.isupper() and len(old) > 1:
        return new.upper()
    if old[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


def _tokens(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]


def _replace(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + _match_case(new, text[start:end]) + text[end:]


def _pick_replace(text: str, rng: random.Random, table: Callable[[str], list[str] | None]) -> str | None:
    cands = []
    for s, e, w in _tokens(text):
        opts = table(w.lower())
        if opts:
            cands.append((s, e, opts))
    if not cands:
        return None
    s, e, opts = rng.choice(cands)
    return _replace(text, s, e, rng.choice(opts))


def _agreement(text: str, rng: random.Random) -> str | None:
    return _pick_replace(text, rng, lambda w: [_AGREE[w]] if w in _AGREE else None)


def _verb_form(text: str, rng: random.Random) -> str | None:
    def table(w: str) -> list[str] | None:
        forms = _FORM_OF.get(w)
        if not forms or w in ("be",):
            return None
        idx = forms.index(w)
        return [forms[j] for j in _VERB_SWAPS[idx] if forms[j] != w] or None

    return _pick_replace(text, rng, table)


def _subject_verb_s(text: str, rng: random.Random) -> str | None:
    """he/she/it + verb-s loses its -s, or they/we/I/you + verb gains one."""
    toks = _tokens(text)
    cands = []
    for (_, _, a), (s, e, b) in zip(toks, toks[1:], strict=False):
        al, bl = a.lower(), b.lower()
        if (
            al in ("he", "she", "it")
            and bl.endswith("s")
            and len(bl) > 3
            and not bl.endswith(("ss", "us", "is"))
        ):
            cands.append(
                (
                    s,
                    e,
                    b[:-2]
                    if bl.endswith("ies") is False and bl.endswith("es") and bl[-3] in "hsxz"
                    else b[:-1],
                )
            )
        elif (
            al in ("they", "we", "i", "you") and bl.isalpha() and len(bl) > 2 and not bl.endswith(("s", "ed"))
        ):
            cands.append((s, e, b + ("es" if bl.endswith(("sh", "ch", "x")) else "s")))
    if not cands:
        return None
    s, e, new = rng.choice(cands)
    return text[:s] + new + text[e:]


def _article(text: str, rng: random.Random) -> str | None:
    toks = _tokens(text)
    cands = []
    for i, (s, e, w) in enumerate(toks):
        wl = w.lower()
        nxt = toks[i + 1][2] if i + 1 < len(toks) else ""
        if wl in ("a", "an") and nxt:
            cands.append(("swap", s, e, "an" if wl == "a" else "a"))
            cands.append(("the", s, e, "the"))
        if wl in ("a", "an", "the") and nxt:
            cands.append(("drop", s, e, ""))
        if wl == "the" and nxt and not nxt.endswith("s"):
            cands.append(("a", s, e, "an" if _VOWEL_SOUND.match(nxt) else "a"))
    if not cands:
        return None
    kind, s, e, new = rng.choice(cands)
    if kind == "drop":
        out = text[:s] + text[e:].lstrip()
        return out[:1].upper() + out[1:] if s == 0 else out
    return _replace(text, s, e, new)


def _preposition(text: str, rng: random.Random) -> str | None:
    toks = _tokens(text)
    cands = [(s, e, w) for s, e, w in toks if w.lower() in _PREP_CONFUSION]
    if not cands:
        return None
    s, e, w = rng.choice(cands)
    if rng.random() < 0.2 and s > 0:  # a dropped preposition
        return text[:s] + text[e:].lstrip()
    return _replace(text, s, e, rng.choice(_PREP_CONFUSION[w.lower()]))


def _noun_number(text: str, rng: random.Random) -> str | None:
    toks = _tokens(text)
    cands = []
    for (_, _, a), (s, e, b) in zip(toks, toks[1:], strict=False):
        al, bl = a.lower(), b.lower()
        if (
            al in ("many", "several", "few", "two", "three", "these", "those", "all")
            and bl.endswith("s")
            and len(bl) > 3
        ):
            cands.append((s, e, b[:-1]))
        elif (
            al in ("a", "an", "one", "every", "each", "this")
            and bl.isalpha()
            and len(bl) > 2
            and not bl.endswith("s")
        ):
            cands.append((s, e, b + "s"))
    if not cands:
        return None
    s, e, new = rng.choice(cands)
    return text[:s] + new + text[e:]


def _confusable(text: str, rng: random.Random) -> str | None:
    return _pick_replace(text, rng, lambda w: [_CONFUSABLE[w]] if w in _CONFUSABLE else None)


GRAMMAR_RULES: dict[str, Callable[[str, random.Random], str | None]] = {
    "agreement": _agreement,
    "subject-verb": _subject_verb_s,
    "verb-form": _verb_form,
    "article": _article,
    "preposition": _preposition,
    "noun-number": _noun_number,
    "confusable": _confusable,
}
_GRAMMAR_WEIGHTS = {
    "agreement": 3,
    "subject-verb": 2,
    "verb-form": 3,
    "article": 3,
    "preposition": 3,
    "noun-number": 1,
    "confusable": 1,
}


def _apply_rules(
    text: str, rng: random.Random, rules: dict, weights: dict, n_edits: int
) -> tuple[str, list[str]] | None:
    out, applied = text, []
    names = list(rules)
    for _ in range(n_edits):
        order = rng.sample(names, len(names))
        order.sort(key=lambda n: -weights.get(n, 1) * rng.random())
        for name in order:
            new = rules[name](out, rng)
            if new is not None and new != out:
                out = " ".join(new.split())
                applied.append(name)
                break
    return (out, applied) if applied and out != text else None


def corrupt_grammar(text: str, rng: random.Random) -> tuple[str, list[str]] | None:
    """1-2 grammar errors (rule names returned), or ``None`` when no rule applies."""
    n = 1 if rng.random() < 0.55 or len(text.split()) < 9 else 2
    return _apply_rules(text, rng, GRAMMAR_RULES, _GRAMMAR_WEIGHTS, n)


# ---- coherence -------------------------------------------------------------------------------


def _lower_first(s: str) -> str:
    return s if s.startswith("I ") or s[:2] == "I'" else s[:1].lower() + s[1:]


def _comma_splice(a: str, b: str, rng: random.Random) -> str:
    return a[:-1] + ", " + _lower_first(b)


def _wrong_join(a: str, b: str, rng: random.Random) -> str:
    conj = rng.choice(["and", "but", "so", "because", "although", "or"])
    return a[:-1] + ", " + conj + " " + _lower_first(b)


def _wrong_link(a: str, b: str, rng: random.Random) -> str:
    return a + " " + rng.choice(_WRONG_LINKS) + " " + _lower_first(b)


def _run_on(a: str, b: str, rng: random.Random) -> str:
    return a[:-1] + " " + _lower_first(b)


def _swap_connective(text: str, rng: random.Random) -> str | None:
    return _pick_replace(text, rng, lambda w: _CONNECTIVES.get(w))


def _drop_connective(text: str, rng: random.Random) -> str | None:
    toks = [(s, e, w) for s, e, w in _tokens(text) if w.lower() in _CONNECTIVES and s > 0]
    if not toks:
        return None
    s, e, _ = rng.choice(toks)
    return text[:s].rstrip(" ,") + ", " + text[e:].lstrip(" ,")


def _wrong_split(text: str, rng: random.Random) -> str | None:
    """A full stop before a subordinate clause or conjunction: a sentence fragment."""
    cands = []
    for s, _e, w in _tokens(text):
        if s > 0 and w.lower() in (*_SUBORD, "and", "but", "or", "so") and len(text[:s].split()) >= 3:
            if len(text[s:].split()) >= 3:
                cands.append(s)
    if not cands:
        return None
    s = rng.choice(cands)
    head = text[:s].rstrip(" ,;:")
    return head + ". " + text[s].upper() + text[s + 1 :]


COHERENCE_RULES: dict[str, Callable] = {
    "comma-splice": _comma_splice,
    "wrong-join": _wrong_join,
    "wrong-link": _wrong_link,
    "run-on": _run_on,
    "swap-connective": _swap_connective,
    "drop-connective": _drop_connective,
    "wrong-split": _wrong_split,
}


def corrupt_coherence(
    text: str, rng: random.Random, second: str | None = None
) -> tuple[str, str, list[str]] | None:
    """Corrupt one sentence, or a pair of neighbouring sentences (``second``).

    Returns ``(corrupted, reference, rules)``; the reference is the clean sentence or the pair.
    """
    if second is not None:
        # Joins that add or change words dominate: a splice alone is invisible to WER after
        # normalization (punctuation and case are dropped), though a grammar checker flags it.
        name = rng.choice(
            ["comma-splice", "wrong-join", "wrong-join", "wrong-join", "wrong-link", "wrong-link", "run-on"]
        )
        out = COHERENCE_RULES[name](text, second, rng)
        ref = text + " " + second
        rules = [name]
        if rng.random() < 0.5:
            extra = _swap_connective(out, rng)
            if extra and extra != out:
                out, rules = extra, rules + ["swap-connective"]
        return (out, ref, rules) if out != ref else None
    order = rng.sample(["swap-connective", "drop-connective", "wrong-split"], 3)
    out, rules = text, []
    for name in order:
        new = COHERENCE_RULES[name](out, rng)
        if new is not None and " ".join(new.split()) != out:
            out, rules = " ".join(new.split()), rules + [name]
            if rng.random() < 0.6:
                break
    return (out, text, rules) if rules else None


# ---- typos -----------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def typo_table() -> dict[str, list[str]]:
    """right word (lower case) -> real misspellings of it, from codespell's dictionary."""
    try:
        import codespell_lib
    except ImportError:
        raise MissingToolError(
            "the codespell package (its misspelling list is the typo data) is not installed; "
            "install it with `pip install codespell` (or `pip install -e .[recognizers]`)"
        ) from None
    path = os.path.join(os.path.dirname(codespell_lib.__file__), "data", "dictionary.txt")
    table: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if "->" not in line:
                continue
            wrong, right = line.rstrip("\n").split("->", 1)
            right = right.strip()
            if "," in right or " " in right or not wrong.isalpha() or not right.isalpha():
                continue  # ambiguous or multi-word corrections are not usable as plain pairs
            if wrong.lower() == right.lower() or len(right) < 3:
                continue
            table.setdefault(right.lower(), []).append(wrong.lower())
    for v in table.values():
        v.sort()
    return table


def corrupt_typos(text: str, rng: random.Random) -> tuple[str, list[list[str]]] | None:
    """Replace 1-3 words by real misspellings; returns (text, [[right, wrong], ...]) or ``None``."""
    table = typo_table()
    cands = [(s, e, w) for s, e, w in _tokens(text) if w.lower() in table]
    if not cands:
        return None
    long = [c for c in cands if len(c[2]) >= 4]
    if long and rng.random() < 0.8:  # people misspell content words more than "the"
        cands = long
    k = min(len(cands), rng.choice([1, 1, 2, 2, 3]))
    picks = sorted(rng.sample(cands, k), key=lambda t: -t[0])
    out, pairs = text, []
    for s, e, w in picks:
        wrong = rng.choice(table[w.lower()])
        out = _replace(out, s, e, wrong)
        pairs.append([w, _match_case(wrong, w)])
    return out, pairs[::-1]
