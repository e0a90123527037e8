"""The committed benchmark under data/benchmark: schema, split hygiene, manifest = fresh stats."""

from __future__ import annotations

import json

import pytest

from neko.benchmark.text import norm_key
from neko.paths import BENCHMARK_DIR
from neko.schema import read_jsonl
from neko.tasks import REGISTRY

SPLITS = ("train", "dev", "test")
TASKS = {"asr", "ocr", "mt", "tec-grammar", "tec-coherence", "typo"}


@pytest.fixture(scope="module")
def shipped():
    return {s: read_jsonl(BENCHMARK_DIR / f"{s}.jsonl", known_tasks=REGISTRY.names()) for s in SPLITS}


@pytest.fixture(scope="module")
def manifest():
    return json.loads((BENCHMARK_DIR / "manifest.json").read_text())


def _close(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-9, abs=1e-12)
    return a == b


def test_every_task_present_and_schema_valid(shipped):
    assert {e.task for e in shipped["test"]} == TASKS
    assert {e.task for e in shipped["dev"]} == TASKS
    for rows in shipped.values():
        ids = [e.id for e in rows]
        assert len(ids) == len(set(ids))
        for e in rows:
            assert e.output and e.output.strip()
            if e.task in ("asr", "mt"):
                assert isinstance(e.input, list) and 1 <= len(e.input) <= 5
            if e.task == "mt":
                assert e.source_lang == e.target_lang == "English" and e.meta["kind"] == "round-trip"


def test_split_hygiene(shipped):
    keys = {s: {norm_key(e.output) for e in rows} for s, rows in shipped.items()}
    assert not keys["train"] & keys["dev"]
    assert not keys["train"] & keys["test"]
    assert not keys["dev"] & keys["test"]
    assert not [e for e in shipped["train"] if e.task == "typo"]
    ids = [e.id for rows in shipped.values() for e in rows]
    assert len(ids) == len(set(ids))


def test_manifest_counts_and_recognizers(shipped, manifest):
    for split, rows in shipped.items():
        for task in TASKS:
            n = sum(1 for e in rows if e.task == task)
            assert manifest["rows"].get(task, {}).get(split, 0) == n
    assert set(manifest["recognizers"]) == {"asr", "asr-whisper", "ocr", "mt"}
    assert manifest["seed"] == 0


def test_whisper_and_released_rows(shipped, manifest):
    """The neural-recognizer ASR rows: Whisper tiny.en in several conditions with real errors, and
    the HyPoradise ATIS rows (Whisper-Large) with their recognizer scores, counted in the manifest."""
    from neko.benchmark.plan import WHISPER_TRAIN_CONDITIONS

    whisper = {s: [e for e in rows if e.id.startswith("asr-whisper-")] for s, rows in shipped.items()}
    assert {s: len(r) for s, r in whisper.items()} == {"train": 2000, "dev": 200, "test": 300}
    for e in whisper["test"]:
        assert e.meta["recognizer"] == "whisper-tiny.en" and e.meta["condition"] in WHISPER_TRAIN_CONDITIONS
        assert len(e.meta["am_score"]) == len(e.input)
    wer = manifest["whisper"]["wer"]["test"]
    assert set(wer) == {"all", *WHISPER_TRAIN_CONDITIONS}
    for cond in WHISPER_TRAIN_CONDITIONS:  # real errors at several rates, with N-best headroom
        assert (
            0.05 < wer[cond]["one_best_wer"] / 100 < 0.5
            and wer[cond]["oracle_wer"] < wer[cond]["one_best_wer"]
        )
    atis = {s: [e for e in rows if e.id.startswith("asr-atis-")] for s, rows in shipped.items()}
    assert {s: len(r) for s, r in atis.items()} == {"train": 3564, "dev": 200, "test": 200}
    assert all(len(e.meta["am_score"]) == len(e.input) for rows in atis.values() for e in rows)
    assert manifest["released"]["atis"]["licence"] == "MIT"


def test_manifest_stats_match_fresh_dataset_stats(shipped, manifest):
    from neko.eval.stats import dataset_stats

    assert _close(manifest["stats"]["test"], dataset_stats(shipped["test"]))
    assert _close(manifest["stats"]["dev"], dataset_stats(shipped["dev"]))


def test_benchmark_leaves_correction_headroom(manifest):
    t = manifest["stats"]["test"]["tasks"]
    for task in ("asr", "ocr", "tec-grammar", "typo"):
        assert 0.03 < t[task]["one_best"]["wer"] < 0.6
    assert t["asr"]["oracle_nbest"]["wer"] < t["asr"]["one_best"]["wer"]
    assert t["mt"]["oracle_nbest"]["bleu"] > t["mt"]["one_best"]["bleu"]


# --------------------------------------------------------------------------- the zero-shot file

ZEROSHOT = BENCHMARK_DIR / "test_zeroshot.jsonl"


@pytest.fixture(scope="module")
def zeroshot_all():
    return read_jsonl(ZEROSHOT, known_tasks=REGISTRY.names())


@pytest.fixture(scope="module")
def zeroshot(zeroshot_all):
    """The zero-shot rows of the manifest's ``zeroshot`` section (PocketSphinx voices, MT pivots);
    the Whisper rows of the file have the ``whisper`` section."""
    return [e for e in zeroshot_all if not e.id.startswith("asr-whisper-")]


def test_zeroshot_file_matches_its_manifest_section(zeroshot, manifest):
    from neko.eval.stats import dataset_stats

    section = manifest["zeroshot"]
    assert section["file"] == ZEROSHOT.name and section["failures"] == []
    assert section["rows"] == {"asr": 100, "mt": 100}
    assert {t: sum(1 for e in zeroshot if e.task == t) for t in ("asr", "mt")} == section["rows"]
    assert _close(section["stats"], dataset_stats(zeroshot))
    assert len({e.id for e in zeroshot}) == len(zeroshot)


def test_zeroshot_conditions_are_held_out_of_every_other_split(zeroshot, shipped, manifest):
    from neko.benchmark.recognizers.mt import PIVOTS, UNSEEN_PIVOTS

    others = {norm_key(e.output) for rows in shipped.values() for e in rows}
    assert not {norm_key(e.output) for e in zeroshot} & others
    seen_voices = {e.meta["voice"] for rows in shipped.values() for e in rows if "voice" in e.meta}
    voices = [e.meta["voice"] for e in zeroshot if e.task == "asr"]
    assert sorted(set(voices)) == ["kal", "slt"] and voices.count("slt") == voices.count("kal") == 50
    assert not set(voices) & seen_voices
    trained = {p for rows in shipped.values() for e in rows if e.task == "mt" for p in e.meta["pivots"]}
    assert trained == set(PIVOTS)
    for e in (e for e in zeroshot if e.task == "mt"):
        assert e.meta["pivots"] == list(UNSEEN_PIVOTS) and len(e.input) == 5
        assert e.source_lang == e.target_lang == "English"
    # each held-out pivot reaches a language no trained pivot is
    assert not {p.split("-via-")[0] for p in UNSEEN_PIVOTS} & set(PIVOTS)
    t = manifest["zeroshot"]["stats"]["tasks"]
    assert t["asr"]["oracle_nbest"]["wer"] < t["asr"]["one_best"]["wer"]


def test_whisper_zeroshot_conditions_are_held_out(zeroshot_all, shipped, manifest):
    from neko.benchmark.plan import WHISPER_ZEROSHOT_CONDITIONS

    wz = [e for e in zeroshot_all if e.id.startswith("asr-whisper-")]
    assert len(wz) == 300 and {e.meta["condition"] for e in wz} == set(WHISPER_ZEROSHOT_CONDITIONS)
    seen = [e.meta["acoustics"] for rows in shipped.values() for e in rows if "acoustics" in e.meta]
    assert len(seen) == 2500
    assert "slt" not in {a["voice"] for a in seen}  # the held-out voice
    assert not [a for a in seen if a["noise"] == "babble" or a["telephone"]]  # the held-out channels
    others = {norm_key(e.output) for rows in shipped.values() for e in rows}
    assert not {norm_key(e.output) for e in wz} & others
    assert set(manifest["whisper"]["wer"]["test_zeroshot"]) == {"all", *WHISPER_ZEROSHOT_CONDITIONS}


@pytest.mark.recognizers
def test_zeroshot_file_is_what_neko_data_build_makes(zeroshot_all):
    """The plan regenerates every row's id, reference and settings, and the real recognizers
    reproduce the first rows of each held-out condition."""
    from neko.benchmark.plan import ZEROSHOT_SPLIT, BuildConfig, make_plan
    from neko.benchmark.runner import _fractions, run_chunk
    from neko.benchmark.text import load_groups, split_groups

    plan = [
        j
        for j in make_plan(BuildConfig(), split_groups(load_groups(), _fractions(), 0))
        if j.split == ZEROSHOT_SPLIT
    ]
    # (the recognizer's scores are what the build adds to a Whisper row's planned meta)
    assert [(j.id, j.reference, {"split": j.split, **j.meta}) for j in plan] == [
        (e.id, e.output, {k: v for k, v in e.meta.items() if k != "am_score"}) for e in zeroshot_all
    ]
    by_id = {e.id: e for e in zeroshot_all}
    for jobs in ([j for j in plan if j.task == "asr"][:2], [j for j in plan if j.task == "mt"][:3]):
        for kind, row in run_chunk(jobs):
            assert kind == "ok" and row["input"] == by_id[row["id"]].input
