"""The build plan: every row's id, reference and recognizer settings, decided up front from the seed.

Design choice: planning is cheap and single-process, execution is expensive and parallel. Every
random choice (which sentence, voice, tempo, noise, font, degradation level, corruption) is made
here from one seeded generator, so the plan, and therefore each row, is the same whatever the
number of workers, the order in which they finish, or how often the build was interrupted. A row id
(``asr-test-00042``) names its plan entry; resuming skips ids already written.

Text tasks (tec-*, typo) are finished at planning time (corruption is microseconds); recognizer
tasks (asr, ocr, mt) carry the settings their worker needs.

The zero-shot file (``test_zeroshot.jsonl``, the paper's Tables 1 and 4 analogs) holds conditions no
train/dev/test row has: ASR by flite voices the build never uses elsewhere (``slt``, a female US
speaker; ``kal``, an 8 kHz diphone voice) and MT round trips through pivot languages no training
row used (``UNSEEN_PIVOTS``). Its sentences continue the test split's draw after every test row is
planned, skipping any text a test row already has, and its choices use their own seeded generator:
adding it leaves every train/dev/test row exactly as it was.

The Whisper ASR rows (``asr-whisper-*``, task ``asr``, ``meta.recognizer = whisper-tiny.en``) are
planned last in the same way: their own seeded generators, sentences of the right split that no
other ASR row of that split has, so adding them leaves every other row as it was. Each row draws an
acoustic condition (:data:`WHISPER_TRAIN_CONDITIONS`: voice, noise type and SNR, reverberation,
tempo); the zero-shot ones use :data:`WHISPER_ZEROSHOT_CONDITIONS`, a voice and two channels (babble
noise, a telephone band) no train/dev/test row has.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

from neko.benchmark.corrupt import corrupt_coherence, corrupt_grammar, corrupt_typos
from neko.benchmark.recognizers.mt import PIVOTS, UNSEEN_PIVOTS
from neko.benchmark.recognizers.ocr import DEGRADATION_LEVELS, FONTS
from neko.benchmark.text import TextPools, norm_key

__all__ = [
    "SIZES",
    "TASKS",
    "SPLITS",
    "ZEROSHOT_SPLIT",
    "ZEROSHOT_SIZES",
    "ZEROSHOT_ASR_VOICES",
    "BuildConfig",
    "Job",
    "make_plan",
    "WHISPER_SIZES",
    "WHISPER_RECOGNIZER",
    "WHISPER_TRAIN_CONDITIONS",
    "WHISPER_ZEROSHOT_CONDITIONS",
    "is_whisper_job",
]

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
# The zero-shot file: held-out conditions, scored but never trained on (see the module docstring).
ZEROSHOT_SPLIT = "test_zeroshot"
ZEROSHOT_TASKS = ("asr", "mt")
ZEROSHOT_SIZES: dict[str, dict[str, int]] = {
    "small": {"asr": 100, "mt": 100},
    "full": {"asr": 200, "mt": 200},
}
ZEROSHOT_ASR_VOICES = ("slt", "kal")
# Whisper ASR rows per split (test_zeroshot: the held-out conditions).
WHISPER_RECOGNIZER = "whisper-tiny.en"
WHISPER_SIZES: dict[str, dict[str, int]] = {
    "small": {"train": 2000, "dev": 200, "test": 300, ZEROSHOT_SPLIT: 300},
    "full": {"train": 4000, "dev": 400, "test": 600, ZEROSHOT_SPLIT: 600},
}
# Seen conditions: name -> (share, voices, noise types, SNR range dB, reverb range, tempo range).
# Rates measured with tiny.en on 10 dev sentences each (bench/NOTES.md): clean flite ~19% WER,
# espeak ~30%, pink/white noise at 10 dB ~40%; the manifest's whisper section has the built rates.
WHISPER_TRAIN_CONDITIONS: dict[str, tuple[float, tuple[str, ...], tuple[str, ...], tuple, tuple, tuple]] = {
    "clean": (
        0.25,
        ("rms", "awb", "kal16", "espeak:en-us", "espeak:en-gb+m3"),
        ("none",),
        (0, 0),
        (0, 0),
        (1, 1),
    ),
    "noise": (
        0.4,
        ("rms", "awb", "kal16", "espeak:en-us", "espeak:en-gb+m3"),
        ("pink", "white"),
        (10, 25),
        (0, 0),
        (1, 1),
    ),
    "reverb": (0.15, ("rms", "awb", "kal16", "espeak:en-us"), ("none", "pink"), (15, 30), (40, 90), (1, 1)),
    "tempo": (
        0.2,
        ("rms", "awb", "kal16", "espeak:en-gb+m3"),
        ("none", "pink"),
        (15, 30),
        (0, 0),
        (1.05, 1.25),
    ),
}
# Held out: a voice no other Whisper row has, and two channels never trained on.
WHISPER_ZEROSHOT_CONDITIONS: dict[
    str, tuple[float, tuple[str, ...], tuple[str, ...], tuple, tuple, tuple]
] = {
    "unseen voice slt": (1 / 3, ("slt",), ("none", "pink"), (12, 20), (0, 0), (1, 1)),
    "unseen noise babble": (
        1 / 3,
        ("rms", "awb", "kal16", "espeak:en-us"),
        ("babble",),
        (8, 15),
        (0, 0),
        (1, 1),
    ),
    "unseen channel telephone": (
        1 / 3,
        ("rms", "awb", "kal16", "espeak:en-us"),
        ("none",),
        (0, 0),
        (0, 0),
        (1, 1),
    ),
}
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
    # Rows of the zero-shot file per task (asr, mt). None: the size's default (none with custom sizes).
    zeroshot: dict[str, int] | None = None
    # Whisper ASR rows per split (train/dev/test/test_zeroshot). None: the size's default (none with
    # custom sizes); {} builds none.
    whisper: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if self.sizes is None and self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; choose one of {', '.join(SIZES)}")
        bad_zs = [t for t in (self.zeroshot or {}) if t not in ZEROSHOT_TASKS]
        if bad_zs:
            raise ValueError(f"zero-shot rows exist for {', '.join(ZEROSHOT_TASKS)} only, got {bad_zs}")
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

    def zeroshot_counts(self) -> dict[str, int]:
        """Rows of the zero-shot file per task (only tasks being built)."""
        table = self.zeroshot
        if table is None:
            table = ZEROSHOT_SIZES.get(self.size, {}) if self.sizes is None else {}
        return {t: int(n) for t, n in table.items() if t in self.tasks and int(n) > 0}

    def whisper_counts(self) -> dict[str, int]:
        """Whisper ASR rows per split (none unless asr is being built)."""
        table = self.whisper
        if table is None:
            table = WHISPER_SIZES.get(self.size, {}) if self.sizes is None else {}
        bad = [k for k in table if k not in (*SPLITS, ZEROSHOT_SPLIT)]
        if bad:
            raise ValueError(
                f"whisper rows are per split ({', '.join((*SPLITS, ZEROSHOT_SPLIT))}), got {bad}"
            )
        if "asr" not in self.tasks:
            return {}
        return {k: int(n) for k, n in table.items() if int(n) > 0}

    def plan_key(self) -> dict[str, Any]:
        """The settings that decide the plan: a resumed build must match them exactly."""
        d = self.to_dict()
        keys = ("seed", "sizes", "asr_tempo_share", "asr_noise_share", "zeroshot", "whisper")
        return {k: d[k] for k in keys if k != "whisper" or d[k]}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        d["sizes"] = self.row_counts()
        d["zeroshot"] = self.zeroshot_counts()
        d["whisper"] = self.whisper_counts()
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
    """Every row of the build, in a fixed order (task, split, index), the zero-shot rows last."""
    counts = cfg.row_counts()
    jobs: list[Job] = []
    test_sents: _Draw | None = None
    for split in SPLITS:
        rng = random.Random(f"{cfg.seed}-{split}")
        sents = _Draw(pools.sentences(split), rng)
        pairs = _Draw(pools.pairs(split), rng)
        if split == "test":
            test_sents = sents
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
    if cfg.zeroshot_counts() and test_sents is not None:
        jobs += _plan_zeroshot(cfg, test_sents, [j.reference for j in jobs if j.split == "test"])
    if cfg.whisper_counts():
        jobs += _plan_whisper(cfg, pools, jobs)
    return jobs


def is_whisper_job(job_id: str) -> bool:
    return job_id.startswith("asr-whisper-")


def _plan_whisper(cfg: BuildConfig, pools: TextPools, planned: list[Job]) -> list[Job]:
    """The Whisper ASR rows (see the module docstring): per split, sentences no ASR row of that split
    has (test: nor any zero-shot row; the zero-shot ones: no test or zero-shot row at all), each with
    a seeded condition."""
    jobs: list[Job] = []
    for split, n in cfg.whisper_counts().items():
        pool_split = "test" if split == ZEROSHOT_SPLIT else split
        if split == ZEROSHOT_SPLIT:
            taken = {norm_key(j.reference) for j in planned + jobs if j.split in ("test", ZEROSHOT_SPLIT)}
            conditions = WHISPER_ZEROSHOT_CONDITIONS
        else:
            taken = {norm_key(j.reference) for j in planned if j.split == split and j.task == "asr"}
            if split == "test":  # the zero-shot file's sentences stay out of every other split
                taken |= {norm_key(j.reference) for j in planned if j.split == ZEROSHOT_SPLIT}
            conditions = WHISPER_TRAIN_CONDITIONS
        rng = random.Random(f"{cfg.seed}-whisper-{split}")
        sents = _Draw(pools.sentences(pool_split), rng)
        names = list(conditions)
        for i in range(n):
            for _ in range(len(sents.items) + 1):
                ref, source = sents.next()
                if norm_key(ref) not in taken:
                    taken.add(norm_key(ref))
                    break
            else:
                raise ValueError(
                    f"whisper/{split}: the {pool_split} pool has no unused sentence left; lower the size"
                )
            name = rng.choices(names, weights=[conditions[c][0] for c in names])[0]
            _, voices, noises, snr, reverb, tempo = conditions[name]
            noise = rng.choice(noises)
            acoustics = {
                "voice": rng.choice(voices),
                "tempo": round(rng.uniform(*tempo), 2),
                "noise": noise,
                "snr_db": round(rng.uniform(*snr), 1) if noise != "none" else 0.0,
                "reverb": int(rng.uniform(*reverb)),
                "telephone": name == "unseen channel telephone",
            }
            meta: dict[str, Any] = {
                "source": source,
                "recognizer": WHISPER_RECOGNIZER,
                "condition": name,
                "acoustics": acoustics,
                "audio_seed": rng.randrange(2**31),
            }
            if split == ZEROSHOT_SPLIT:
                meta["zeroshot"] = True
            jobs.append(Job(f"asr-whisper-{split}-{i:05d}", "asr", split, ref, meta))
    return jobs


def _plan_zeroshot(cfg: BuildConfig, sents: _Draw, test_refs: list[str]) -> list[Job]:
    """The zero-shot rows: unused test-pool sentences (never a text a test row has, not even inside a
    coherence pair), ASR in the held-out voices (evenly), MT through the held-out pivots."""
    taken = "\n".join(norm_key(r) for r in test_refs)
    jobs: list[Job] = []
    for task in ZEROSHOT_TASKS:
        n = cfg.zeroshot_counts().get(task, 0)
        rng = random.Random(f"{cfg.seed}-{ZEROSHOT_SPLIT}-{task}")
        for i in range(n):
            while True:
                if sents.i >= len(sents.items):
                    raise ValueError(
                        f"{ZEROSHOT_SPLIT}: the test pool has no unused sentence left for {task} row {i}; "
                        "lower the zero-shot size"
                    )
                ref, source = sents.next()
                key = norm_key(ref)
                if key not in taken:
                    taken += "\n" + key
                    break
            rid = f"{task}-{ZEROSHOT_SPLIT}-{i:05d}"
            meta: dict[str, Any] = {"source": source, "zeroshot": True}
            if task == "asr":
                voice = ZEROSHOT_ASR_VOICES[i % len(ZEROSHOT_ASR_VOICES)]
                meta.update(
                    voice=voice,
                    condition=f"unseen voice {voice}",
                    tempo=1.0,
                    noise=0.0,
                    audio_seed=rng.randrange(2**31),
                )
            else:
                meta.update(kind="round-trip", pivots=list(UNSEEN_PIVOTS), condition="unseen pivots")
            jobs.append(Job(rid, task, ZEROSHOT_SPLIT, ref, meta))
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
