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
    assert set(manifest["recognizers"]) == {"asr", "ocr", "mt"}
    assert manifest["seed"] == 0


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
def zeroshot():
    return read_jsonl(ZEROSHOT, known_tasks=REGISTRY.names())


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
    seen_voices = {e.meta["voice"] for rows in shipped.values() for e in rows if e.task == "asr"}
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


@pytest.mark.recognizers
def test_zeroshot_file_is_what_neko_data_build_makes(zeroshot):
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
    assert [(j.id, j.reference, {"split": j.split, **j.meta}) for j in plan] == [
        (e.id, e.output, e.meta) for e in zeroshot
    ]
    by_id = {e.id: e for e in zeroshot}
    for jobs in ([j for j in plan if j.task == "asr"][:2], [j for j in plan if j.task == "mt"][:3]):
        for kind, row in run_chunk(jobs):
            assert kind == "ok" and row["input"] == by_id[row["id"]].input
