"""The build plan: every row's id, reference and recognizer settings, decided up front from the seed.

Design choice: planning is cheap and single-process, execution is expensive and parallel. Every
random choice (which sentence, voice, tempo, noise, font, degradation level, corruption) is made
here from one seeded generator, so the plan, and therefore each row, is the same whatever the
number of workers, the order in which they finish, or how often the build was interrupted. A row id
(``asr-test-00042``) names its plan entry; resuming skips ids already written.

Text tasks (tec-*, typo) are finished at planning time (corruption is microseconds); recognizer
tasks (asr, ocr, mt) carry the settings their worker needs.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

from neko.data.build.corrupt import corrupt_coherence, corrupt_grammar, corrupt_typos
from neko.data.build.text import TextPools
from neko.data.recognizers.mt import PIVOTS
from neko.data.recognizers.ocr import DEGRADATION_LEVELS, FONTS

__all__ = ["SIZES", "TASKS", "SPLITS", "BuildConfig", "Job", "make_plan"]

TASKS = ("asr", "ocr", "mt", "tec-grammar", "tec-coherence", "typo")
SPLITS = ("train", "dev", "test")
RECOGNIZER_TASKS = ("asr", "ocr", "mt")
# rows per task per split; typo is the unseen task: never in train.
SIZES: dict[str, dict[str, dict[str, int]]] = {
    "small": {
        "asr": {"train": 1000, "dev": 150, "test": 250},
        "ocr": {"train": 2000, "dev": 200, "test": 300},
        "mt": {"train": 2500, "dev": 200, "test": 300},
        "tec-grammar": {"train": 2500, "dev": 200, "test": 300},
        "tec-coherence": {"train": 2500, "dev": 200, "test": 300},
        "typo": {"train": 0, "dev": 100, "test": 300},
    },
    "full": {
        "asr": {"train": 4000, "dev": 300, "test": 500},
        "ocr": {"train": 5000, "dev": 400, "test": 600},
        "mt": {"train": 5000, "dev": 400, "test": 600},
        "tec-grammar": {"train": 5000, "dev": 400, "test": 600},
        "tec-coherence": {"train": 5000, "dev": 400, "test": 600},
        "typo": {"train": 0, "dev": 300, "test": 600},
    },
}
SPLIT_FRACTIONS = {"train": 0.8, "dev": 0.08, "test": 0.12}
ASR_VOICES = ("rms", "kal16", "awb")
# Share of rows and weights per OCR level: mixing easy and hard lines like a real scan batch.
OCR_LEVEL_WEIGHTS = {"clean": 0.1, "light": 0.25, "medium": 0.35, "heavy": 0.3}


@dataclass
class BuildConfig:
    """What ``neko data build`` makes. ``sizes`` overrides ``size`` (task -> split -> rows)."""

    out: str = "data/benchmark"
    size: str = "small"
    tasks: tuple[str, ...] = TASKS
    workers: int = 0  # 0: all cores
    seed: int = 0
    sizes: dict[str, dict[str, int]] | None = None
    asr_tempo_share: float = 0.25
    asr_noise_share: float = 0.25
    keep_work: bool = False

    def __post_init__(self) -> None:
        if self.sizes is None and self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; choose one of {', '.join(SIZES)}")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise ValueError(f"unknown task(s) {bad}; known: {', '.join(TASKS)}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = all cores), got {self.workers}")
        for task, per in self.row_counts().items():
            if task == "typo" and per.get("train", 0):
                raise ValueError("typo is the unseen task: it has no train rows (set its train size to 0)")

    def row_counts(self) -> dict[str, dict[str, int]]:
        table = self.sizes if self.sizes is not None else SIZES[self.size]
        return {t: {s: int(table.get(t, {}).get(s, 0)) for s in SPLITS} for t in self.tasks}

    def plan_key(self) -> dict[str, Any]:
        """The settings that decide the plan: a resumed build must match them exactly."""
        d = self.to_dict()
        return {k: d[k] for k in ("seed", "sizes", "asr_tempo_share", "asr_noise_share")}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        d["sizes"] = self.row_counts()
        return d


@dataclass
class Job:
    """One planned row. ``input`` is set for text tasks; recognizer tasks fill it in a worker."""

    id: str
    task: str
    split: str
    reference: str
    meta: dict[str, Any] = field(default_factory=dict)
    input: str | list[str] | None = None


class _Draw:
    """Sentences of one split without replacement across tasks; wraps around if a split runs out."""

    def __init__(self, items: list, rng: random.Random):
        self.items = list(items)
        rng.shuffle(self.items)
        self.i = 0

    def next(self):
        if not self.items:
            raise ValueError("no sentences left for this split; use a smaller --size")
        item = self.items[self.i % len(self.items)]
        self.i += 1
        return item


def make_plan(cfg: BuildConfig, pools: TextPools) -> list[Job]:
    """Every row of the build, in a fixed order (task, split, index)."""
    counts = cfg.row_counts()
    jobs: list[Job] = []
    for split in SPLITS:
        rng = random.Random(f"{cfg.seed}-{split}")
        sents = _Draw(pools.sentences(split), rng)
        pairs = _Draw(pools.pairs(split), rng)
        for task in TASKS:
            if task not in counts:
                continue
            n = counts[task][split]
            trng = random.Random(f"{cfg.seed}-{split}-{task}")
            made = attempts = 0
            while made < n:
                attempts += 1
                if attempts > 20 * n + 100:
                    raise ValueError(f"{task}/{split}: could only plan {made} of {n} rows from the text pool")
                job = _plan_one(task, split, made, sents, pairs, trng, cfg)
                if job is not None:
                    jobs.append(job)
                    made += 1
    return jobs


def _plan_one(
    task: str, split: str, i: int, sents: _Draw, pairs: _Draw, rng: random.Random, cfg: BuildConfig
):
    rid = f"{task}-{split}-{i:05d}"
    if task == "tec-coherence" and pairs.items and rng.random() < 0.5:
        a, b, source = pairs.next()
        res = corrupt_coherence(a, rng, b)
        if res is None:
            return None
        text, ref, rules = res
        return Job(rid, task, split, ref, {"source": source, "errors": rules, "unit": "pair"}, text)
    ref, source = sents.next()
    meta: dict[str, Any] = {"source": source}
    if task == "asr":
        meta["voice"] = rng.choice(ASR_VOICES)
        u = rng.random()
        tempo, noise = 1.0, 0.0
        if u < cfg.asr_tempo_share:
            tempo = round(rng.uniform(1.15, 1.3), 2)
        elif u < cfg.asr_tempo_share + cfg.asr_noise_share:
            noise = round(rng.uniform(0.01, 0.025), 3)
        meta.update(
            condition="tempo" if tempo != 1.0 else "noise" if noise else "clean",
            tempo=tempo,
            noise=noise,
            audio_seed=rng.randrange(2**31),
        )
        return Job(rid, task, split, ref, meta)
    if task == "ocr":
        level = rng.choices(list(OCR_LEVEL_WEIGHTS), weights=list(OCR_LEVEL_WEIGHTS.values()))[0]
        meta.update(
            font=rng.choice(FONTS),
            level=level,
            degradation=asdict(DEGRADATION_LEVELS[level]),
            image_seed=rng.randrange(2**31),
        )
        return Job(rid, task, split, ref, meta)
    if task == "mt":
        meta.update(kind="round-trip", pivots=list(PIVOTS))
        return Job(rid, task, split, ref, meta)
    if task == "tec-grammar":
        res = corrupt_grammar(ref, rng)
        if res is None:
            return None
        meta["errors"] = res[1]
        return Job(rid, task, split, ref, meta, res[0])
    if task == "tec-coherence":
        res = corrupt_coherence(ref, rng)
        if res is None:
            return None
        meta.update(errors=res[2], unit="sentence")
        return Job(rid, task, split, ref, meta, res[0])
    if task == "typo":
        res = corrupt_typos(ref, rng)
        if res is None:
            return None
        meta["typos"] = res[1]
        return Job(rid, task, split, ref, meta, res[0])
    raise ValueError(f"unknown task {task!r}")
