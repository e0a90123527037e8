"""Whisper tiny.en (CTranslate2) as a first pass: real N-best with scores, seeded audio conditions,
and the Whisper rows of a build planned and merged without touching any other row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neko.benchmark.plan import (
    WHISPER_RECOGNIZER,
    WHISPER_ZEROSHOT_CONDITIONS,
    ZEROSHOT_SPLIT,
    BuildConfig,
    is_whisper_job,
    make_plan,
)
from neko.benchmark.recognizers.acoustics import Acoustics, render_speech
from neko.benchmark.runner import build_benchmark
from neko.benchmark.text import load_groups, norm_key, split_groups
from neko.schema import read_jsonl

SIZES = {"asr": {"train": 2, "dev": 1, "test": 2}, "tec-grammar": {"train": 2, "dev": 1, "test": 2}}
WHISPER = {"train": 3, "dev": 2, "test": 2, ZEROSHOT_SPLIT: 3}


def _pools():
    from neko.benchmark.plan import SPLIT_FRACTIONS

    return split_groups(load_groups(), dict(SPLIT_FRACTIONS), 5)


def test_acoustics_rejects_unknown_voice_and_noise():
    with pytest.raises(ValueError, match="unknown voice"):
        Acoustics("nobody")
    with pytest.raises(ValueError, match="unknown noise type"):
        Acoustics("rms", noise="traffic")
    with pytest.raises(ValueError, match="speech engine"):
        Acoustics("festival:kal")


@pytest.mark.recognizers
def test_render_speech_is_seeded_and_mixes_at_the_requested_snr():
    clean = np.frombuffer(render_speech("the cat sat on the mat", Acoustics("rms")), dtype=np.int16)
    ac = Acoustics("rms", noise="white", snr_db=10.0)
    a = render_speech("the cat sat on the mat", ac, seed=1)
    assert a == render_speech("the cat sat on the mat", ac, seed=1)
    assert a != render_speech("the cat sat on the mat", ac, seed=2)
    noisy = np.frombuffer(a, dtype=np.int16).astype(np.float64)
    noise = noisy - clean.astype(np.float64)
    snr = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))
    assert snr == pytest.approx(10.0, abs=0.5)


@pytest.mark.recognizers
def test_whisper_tiny_gives_a_scored_nbest_of_real_speech():
    from neko.benchmark.recognizers.whisper_ct2 import CT2WhisperRecognizer
    from neko.metrics.wer import corpus_wer

    rec = CT2WhisperRecognizer(nbest=5)
    ref = "The weather will be warm and sunny tomorrow afternoon."
    clean = render_speech(ref, Acoustics("rms"))
    noisy = render_speech(ref, Acoustics("kal16", noise="pink", snr_db=5.0), seed=3)
    out = rec.recognize_scored([clean, noisy, b"\x00\x00" * 100])
    for res in out[:2]:
        hyps = [h for h, _ in res]
        scores = [s for _, s in res]
        assert 1 <= len(hyps) <= 5 and len(set(hyps)) == len(hyps)
        assert all(s < 0 for s in scores) and scores == sorted(scores, reverse=True)
    assert corpus_wer([ref], [out[0][0][0]]).wer < 0.3  # clean speech: (nearly) right
    assert isinstance(out[2], Exception) and "too short" in str(out[2])
    assert rec.recognize(clean) == [h for h, _ in out[0]]
    assert "whisper-tiny.en" in rec.version and "CTranslate2" in rec.version


def test_whisper_rows_leave_every_other_planned_row_unchanged():
    pools = _pools()
    plain = make_plan(BuildConfig(out="x", sizes=SIZES, tasks=tuple(SIZES), seed=5, whisper={}), pools)
    with_w = make_plan(BuildConfig(out="x", sizes=SIZES, tasks=tuple(SIZES), seed=5, whisper=WHISPER), pools)
    assert [j for j in with_w if not is_whisper_job(j.id)] == plain
    wh = [j for j in with_w if is_whisper_job(j.id)]
    assert {s: sum(j.split == s for j in wh) for s in WHISPER} == WHISPER
    for split in ("train", "dev", "test"):
        others = {norm_key(j.reference) for j in plain if j.split == split and j.task == "asr"}
        mine = [norm_key(j.reference) for j in wh if j.split == split]
        assert not others & set(mine) and len(mine) == len(set(mine))
    test_refs = {norm_key(j.reference) for j in with_w if j.split == "test"}
    for j in wh:
        assert j.task == "asr" and j.meta["recognizer"] == WHISPER_RECOGNIZER
        Acoustics(**j.meta["acoustics"])  # every planned condition is valid
        if j.split == ZEROSHOT_SPLIT:
            assert (
                j.meta["condition"] in WHISPER_ZEROSHOT_CONDITIONS and norm_key(j.reference) not in test_refs
            )
            assert j.meta["zeroshot"] is True
        else:
            assert j.meta["condition"] not in WHISPER_ZEROSHOT_CONDITIONS
            assert j.meta["acoustics"]["noise"] != "babble" and not j.meta["acoustics"]["telephone"]
    # the plan is a pure function of the seed
    again = make_plan(BuildConfig(out="x", sizes=SIZES, tasks=tuple(SIZES), seed=5, whisper=WHISPER), pools)
    assert again == with_w


@pytest.mark.slow
@pytest.mark.recognizers
def test_whisper_only_build_merges_its_rows_and_keeps_the_rest_byte_for_byte(tmp_path):
    out = tmp_path / "b"
    cfg = BuildConfig(out=str(out), sizes=SIZES, tasks=tuple(SIZES), workers=2, seed=5, whisper={})
    build_benchmark(cfg, quiet=True)
    before = {s: (out / f"{s}.jsonl").read_bytes() for s in ("train", "dev", "test")}
    wcfg = BuildConfig(out=str(out), sizes=SIZES, tasks=tuple(SIZES), workers=2, seed=5, whisper=WHISPER)
    res = build_benchmark(wcfg, quiet=True, only_whisper=True)
    assert res.zeroshot_rows == {"asr": 3}
    for s in ("train", "dev", "test"):
        lines = (out / f"{s}.jsonl").read_bytes().splitlines(keepends=True)
        assert b"".join(ln for ln in lines if b'"asr-whisper-' not in ln) == before[s]
        rows = [e for e in read_jsonl(out / f"{s}.jsonl") if is_whisper_job(e.id)]
        assert len(rows) == WHISPER[s]
        for e in rows:
            assert len(e.meta["am_score"]) == len(e.input) and e.meta["recognizer"] == WHISPER_RECOGNIZER
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"]["asr"] == {s: SIZES["asr"][s] + WHISPER[s] for s in ("train", "dev", "test")}
    assert manifest["whisper"]["wer"]["test"]["all"]["rows"] == 2
    assert "asr-whisper" in manifest["recognizers"]
    # running it again replaces the rows with the same ones (seeded audio, deterministic decoder)
    first = (out / "test.jsonl").read_bytes()
    build_benchmark(wcfg, quiet=True, only_whisper=True)
    assert (out / "test.jsonl").read_bytes() == first


def test_whisper_only_needs_an_existing_build(tmp_path):
    cfg = BuildConfig(out=str(tmp_path / "none"), sizes=SIZES, tasks=tuple(SIZES), seed=5, whisper=WHISPER)
    with pytest.raises(ValueError, match="existing build"):
        build_benchmark(cfg, quiet=True, only_whisper=True)
    cfg = BuildConfig(out=str(tmp_path / "none"), sizes=SIZES, tasks=tuple(SIZES), seed=5, whisper={})
    with pytest.raises(ValueError, match="no Whisper rows"):
        build_benchmark(cfg, quiet=True, only_whisper=True)


def test_whisper_rows_must_be_per_split():
    with pytest.raises(ValueError, match="per split"):
        BuildConfig(out="x", sizes=SIZES, tasks=tuple(SIZES), whisper={"valid": 3}).whisper_counts()


CITIES = "boston denver dallas atlanta seattle miami chicago houston phoenix detroit".split()


def _released(path: Path, n: int) -> Path:
    rows = []
    for i in range(n):
        # pairs of rows share a reference (a request spoken twice): they must stay on one side
        ref = f"show me flights from {CITIES[(i // 2) % 10]} to {CITIES[(i // 20) % 10]}"
        hyps = [ref, ref.replace("flights", "fights"), ref + " please"]
        rows.append({"id": f"u{i}", "input": hyps, "output": ref, "am_score": [-0.1, -0.2, -0.3]})
    path.write_text(json.dumps(rows))
    return path


def test_released_nbest_is_carved_by_reference_and_replaces_itself(tmp_path):
    from neko.benchmark.released import add_released_nbest
    from neko.benchmark.runner import write_manifest

    out = tmp_path / "b"
    out.mkdir()
    (out / "train.jsonl").write_text("")
    (out / "dev.jsonl").write_text("")
    (out / "test.jsonl").write_text("")
    write_manifest(out, BuildConfig(out=str(out), sizes=SIZES, tasks=tuple(SIZES)), {}, {})
    src = _released(tmp_path / "set.json", 40)
    made = add_released_nbest(
        src, out, name="atis", recognizer="whisper-large", licence="MIT", n_dev=6, n_test=6
    )
    assert sum(made.values()) == 40 and made["dev"] >= 6 and made["test"] >= 6
    splits = {s: read_jsonl(out / f"{s}.jsonl") for s in ("train", "dev", "test")}
    keys = {s: {norm_key(e.output) for e in rows} for s, rows in splits.items()}
    assert (
        not keys["train"] & keys["dev"]
        and not keys["train"] & keys["test"]
        and not keys["dev"] & keys["test"]
    )
    e = splits["test"][0]
    assert e.id.startswith("asr-atis-test-") and e.meta["am_score"] == [-0.1, -0.2, -0.3]
    assert e.meta["recognizer"] == "whisper-large" and e.meta["condition"] == "atis"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["released"]["atis"]["licence"] == "MIT"
    assert manifest["rows"]["asr"] == made
    before = {s: (out / f"{s}.jsonl").read_bytes() for s in ("train", "dev", "test")}
    add_released_nbest(src, out, name="atis", recognizer="whisper-large", licence="MIT", n_dev=6, n_test=6)
    assert {s: (out / f"{s}.jsonl").read_bytes() for s in ("train", "dev", "test")} == before
    with pytest.raises(ValueError, match="letters, digits"):
        add_released_nbest(src, out, name="a/b", recognizer="x", licence="MIT")
