"""The zero-shot file: held-out conditions, built with the rest or alone, never changing the other splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neko.benchmark.plan import ZEROSHOT_SPLIT, BuildConfig
from neko.benchmark.runner import build_benchmark
from neko.benchmark.text import norm_key
from neko.schema import read_jsonl

SIZES = {
    "asr": {"train": 1, "dev": 1, "test": 2},
    "mt": {"train": 2, "dev": 1, "test": 2},
    "tec-grammar": {"train": 2, "dev": 1, "test": 2},
}
ZS = {"asr": 2, "mt": 2}


def _cfg(out: Path, **over) -> BuildConfig:
    return BuildConfig(out=str(out), sizes=SIZES, tasks=tuple(SIZES), workers=1, seed=4, **over)


def _splits(out: Path) -> list[bytes]:
    return [(out / f"{s}.jsonl").read_bytes() for s in ("train", "dev", "test")]


@pytest.mark.slow
@pytest.mark.recognizers
def test_zeroshot_rows_are_held_out_and_leave_the_other_splits_unchanged(tmp_path):
    plain, both, alone = tmp_path / "plain", tmp_path / "both", tmp_path / "alone"
    build_benchmark(_cfg(plain), quiet=True)
    assert not (plain / f"{ZEROSHOT_SPLIT}.jsonl").exists()  # custom sizes: no zero-shot file unless asked
    res = build_benchmark(_cfg(both, zeroshot=ZS), quiet=True)
    assert res.zeroshot_rows == ZS and res.zeroshot_failures == 0
    # Adding the zero-shot file changes no train/dev/test row.
    assert _splits(both) == _splits(plain)
    zs = read_jsonl(both / f"{ZEROSHOT_SPLIT}.jsonl")
    assert [e.id for e in zs] == ["asr-test_zeroshot-00000", "asr-test_zeroshot-00001"] + [
        "mt-test_zeroshot-00000",
        "mt-test_zeroshot-00001",
    ]
    others = {norm_key(e.output) for s in ("train", "dev", "test") for e in read_jsonl(both / f"{s}.jsonl")}
    assert not {norm_key(e.output) for e in zs} & others
    asr = [e for e in zs if e.task == "asr"]
    assert [e.meta["voice"] for e in asr] == ["slt", "kal"] and all(len(e.input) >= 1 for e in asr)
    mt = [e for e in zs if e.task == "mt"]
    assert all(len(e.input) == 5 and e.meta["pivots"][0] == "por-via-spa" for e in mt)
    manifest = json.loads((both / "manifest.json").read_text())
    section = manifest["zeroshot"]
    assert section["rows"] == ZS and section["failures"] == []
    assert "pivots por-via-spa" in section["recognizers"]["mt"]
    assert manifest["recognizers"]["mt"].endswith("(pivots spa, cat, glg, epo, hbs)")  # the trained ones

    # Alone, beside an existing build: the same file, and the other files are left byte for byte.
    build_benchmark(_cfg(alone), quiet=True)
    before = _splits(alone) + [(alone / "failures.jsonl").read_bytes()]
    old_manifest = json.loads((alone / "manifest.json").read_text())
    build_benchmark(_cfg(alone, zeroshot=ZS), quiet=True, only_zeroshot=True)
    assert _splits(alone) + [(alone / "failures.jsonl").read_bytes()] == before
    assert (alone / f"{ZEROSHOT_SPLIT}.jsonl").read_bytes() == (both / f"{ZEROSHOT_SPLIT}.jsonl").read_bytes()
    new_manifest = json.loads((alone / "manifest.json").read_text())
    assert {k: v for k, v in new_manifest.items() if k != "zeroshot"} == old_manifest
    assert new_manifest["zeroshot"]["stats"] == section["stats"]


@pytest.mark.recognizers
def test_zeroshot_only_refuses_a_build_it_does_not_extend(tmp_path):
    with pytest.raises(ValueError, match="no manifest.json"):
        build_benchmark(_cfg(tmp_path, zeroshot=ZS), quiet=True, only_zeroshot=True)
    sizes = {"tec-grammar": {"train": 2, "dev": 1, "test": 2}}
    text_only = BuildConfig(out=str(tmp_path), sizes=sizes, tasks=("tec-grammar",), workers=1, seed=4)
    build_benchmark(text_only, quiet=True)
    other_seed = BuildConfig(
        out=str(tmp_path), sizes=sizes, tasks=("tec-grammar", "mt"), workers=1, seed=5, zeroshot={"mt": 1}
    )
    with pytest.raises(ValueError, match="--seed 4"):
        build_benchmark(other_seed, quiet=True, only_zeroshot=True)
    no_rows = BuildConfig(out=str(tmp_path), sizes=sizes, tasks=("tec-grammar",), workers=1, seed=4)
    with pytest.raises(ValueError, match="no zero-shot rows"):
        build_benchmark(no_rows, quiet=True, only_zeroshot=True)


def test_zeroshot_sizes_are_checked():
    with pytest.raises(ValueError, match="asr, mt only"):
        BuildConfig(zeroshot={"ocr": 3})
    assert BuildConfig().zeroshot_counts() == {"asr": 100, "mt": 100}
    assert BuildConfig(sizes=SIZES, tasks=tuple(SIZES)).zeroshot_counts() == {}
    assert BuildConfig(tasks=("asr",)).zeroshot_counts() == {"asr": 100}


@pytest.mark.recognizers
def test_a_missing_apertium_pair_names_its_package(monkeypatch):
    from neko.benchmark.recognizers import mt
    from neko.benchmark.recognizers.base import MissingToolError

    monkeypatch.setitem(mt._ALL_PIVOTS, "xxx-via-spa", ("eng-spa", "es-xx", "xx-es", "spa-eng"))
    with pytest.raises(MissingToolError, match="es-xx, xx-es not installed.*apt-get install apertium-es-xx"):
        mt.ApertiumRoundTrip(("xxx-via-spa",)).check_pairs()
