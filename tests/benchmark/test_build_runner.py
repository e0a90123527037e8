"""`neko data build` end to end on a few rows: real recognizers, resume after a kill, failed rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neko.benchmark.plan import BuildConfig
from neko.benchmark.recognizers.base import RecognizerError
from neko.benchmark.recognizers.ocr import TesseractRecognizer
from neko.benchmark.runner import WORK_DIR, build_benchmark, read_shard
from neko.benchmark.text import norm_key
from neko.schema import read_jsonl
from neko.tasks import REGISTRY

TINY = {
    "asr": {"train": 1, "dev": 1, "test": 2},
    "ocr": {"train": 2, "dev": 1, "test": 2},
    "mt": {"train": 3, "dev": 2, "test": 2},
    "tec-grammar": {"train": 4, "dev": 2, "test": 3},
    "tec-coherence": {"train": 4, "dev": 2, "test": 3},
    "typo": {"train": 0, "dev": 2, "test": 3},
}


def _close(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-9, abs=1e-12)
    return a == b


@pytest.mark.slow
@pytest.mark.recognizers
def test_tiny_build_all_tasks(tmp_path):
    from neko.eval.stats import dataset_stats

    cfg = BuildConfig(out=str(tmp_path / "b"), sizes=TINY, workers=2, seed=3)
    res = build_benchmark(cfg, quiet=True)
    out = Path(cfg.out)
    assert not (out / WORK_DIR).exists()  # finished builds leave no shards behind
    assert sum(res.failures.values()) == 0
    splits = {
        s: read_jsonl(out / f"{s}.jsonl", known_tasks=REGISTRY.names()) for s in ("train", "dev", "test")
    }
    for task, per in TINY.items():
        for split, n in per.items():
            assert sum(1 for e in splits[split] if e.task == task) == n == res.rows[task][split]
    keys = {s: {norm_key(e.output) for e in rows} for s, rows in splits.items()}
    assert (
        not (keys["train"] & keys["dev"])
        and not (keys["train"] & keys["test"])
        and not (keys["dev"] & keys["test"])
    )
    for e in splits["test"]:
        assert e.output and e.meta["split"] == "test"
        if e.task == "asr":
            assert 1 <= len(e.input) <= 5 and len(set(e.input)) == len(e.input)
            assert e.meta["voice"] in ("rms", "kal16", "awb") and e.meta["condition"] in (
                "clean",
                "tempo",
                "noise",
            )
        elif e.task == "mt":
            assert len(e.input) == 5 and e.source_lang == e.target_lang == "English"
            assert e.meta["kind"] == "round-trip"
        elif e.task == "ocr":
            assert isinstance(e.input, str) and e.meta["level"] in ("clean", "light", "medium", "heavy")
        else:
            assert isinstance(e.input, str) and e.input != e.output  # corruption did something
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == {t: res.rows[t] for t in manifest["rows"]}
    assert set(manifest["recognizers"]) == {"asr", "ocr", "mt"}
    assert _close(manifest["stats"]["test"], dataset_stats(splits["test"]))


def test_output_independent_of_worker_count(tmp_path):
    sizes = {t: TINY[t] for t in ("tec-grammar", "tec-coherence", "typo")}
    outs = []
    for w in (1, 2):
        cfg = BuildConfig(out=str(tmp_path / f"w{w}"), sizes=sizes, tasks=tuple(sizes), workers=w, seed=5)
        build_benchmark(cfg, quiet=True)
        outs.append([(Path(cfg.out) / f"{s}.jsonl").read_bytes() for s in ("train", "dev", "test")])
    assert outs[0] == outs[1]


_SCRIPT_SIZES = {"ocr": {"train": 24, "dev": 0, "test": 0}, "typo": {"train": 0, "dev": 3, "test": 3}}
_KILL_SCRIPT = f"""
import sys
from neko.benchmark import runner
from neko.benchmark.plan import BuildConfig
from neko.benchmark.runner import build_benchmark
runner.CHUNK["ocr"] = 2  # small chunks so the shard grows row by row
sizes = {_SCRIPT_SIZES!r}
build_benchmark(BuildConfig(out=sys.argv[1], sizes=sizes, tasks=("ocr", "typo"), workers=2, seed=1), quiet=True)
"""


@pytest.mark.slow
@pytest.mark.recognizers
def test_resume_after_kill_has_no_duplicate_or_half_rows(tmp_path):
    out = tmp_path / "b"
    shard = out / WORK_DIR / "ocr.train.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(out)], start_new_session=True)
    try:
        deadline = time.time() + 90
        # count lines without read_shard: it truncates torn lines, which would race the writer
        while time.time() < deadline and (shard.read_bytes().count(b"\n") if shard.exists() else 0) < 6:
            time.sleep(0.2)
            assert proc.poll() is None, "build finished before it could be interrupted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = read_shard(shard)
    assert 6 <= len(before) < 24
    with shard.open("ab") as fh:  # what a kill in the middle of a write leaves behind
        fh.write(b'{"id": "ocr-train-000')
    cfg = BuildConfig(out=str(out), sizes=_SCRIPT_SIZES, tasks=("ocr", "typo"), workers=1, seed=1)
    res = build_benchmark(cfg, quiet=True)
    assert res.resumed_rows >= len(before) + 6  # the typo rows and finished OCR rows were not redone
    rows = read_jsonl(out / "train.jsonl")
    ids = [e.id for e in rows]
    assert len(ids) == len(set(ids)) == 24
    assert ids == [f"ocr-train-{i:05d}" for i in range(24)]
    # rows done before the kill are kept exactly as written
    by_id = {e.id: e for e in rows}
    for r in before:
        assert by_id[r["id"]].input == r["input"]


def test_changed_settings_do_not_resume_a_different_plan(tmp_path):
    sizes = {"tec-grammar": {"train": 3, "dev": 1, "test": 1}}
    cfg = BuildConfig(out=str(tmp_path), sizes=sizes, tasks=("tec-grammar",), workers=1, seed=1)
    build_benchmark(cfg, quiet=True, max_chunks=0)  # interrupted before any row
    other = BuildConfig(out=str(tmp_path), sizes=sizes, tasks=("tec-grammar",), workers=1, seed=2)
    with pytest.raises(ValueError, match="other settings"):
        build_benchmark(other, quiet=True)


class _FlakyOCR(TesseractRecognizer):
    """Real Tesseract, except that it crashes on one line and reads nothing on another."""

    def recognize(self, item):
        text = super().recognize(item)
        if "crash" in self.seen(item):
            raise RecognizerError("tesseract crashed (simulated segfault)")
        return [] if "empty" in self.seen(item) else text

    def seen(self, item) -> str:
        return item.info.get("neko_text", "")


@pytest.mark.recognizers
def test_failing_rows_are_recorded_not_fatal(tmp_path, monkeypatch):
    from neko.benchmark import runner

    make_input = runner._make_input

    def tagged(job):  # label the image with its row so the flaky recognizer can pick rows
        img = make_input(job)
        img.info["neko_text"] = {"ocr-test-00000": "crash", "ocr-dev-00000": "empty"}.get(job.id, "")
        return img

    monkeypatch.setattr(runner, "_make_input", tagged)
    sizes = {"ocr": {"train": 0, "dev": 1, "test": 2}, "tec-grammar": {"train": 2, "dev": 1, "test": 2}}
    cfg = BuildConfig(out=str(tmp_path), sizes=sizes, tasks=tuple(sizes), workers=1, seed=0)
    res = build_benchmark(cfg, quiet=True, recognizers={"ocr": _FlakyOCR()})
    assert res.failures == {"ocr": 2, "tec-grammar": 0}
    fails = [json.loads(x) for x in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert [(f["id"], f["reason"]) for f in fails] == [
        ("ocr-dev-00000", "tesseract returned no hypothesis"),
        ("ocr-test-00000", "tesseract crashed (simulated segfault)"),
    ]
    assert res.rows["ocr"] == {"train": 0, "dev": 0, "test": 1}
    assert res.rows["tec-grammar"] == {"train": 2, "dev": 1, "test": 2}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["failures"] == {"ocr": 2, "tec-grammar": 0}


def test_cli_rejects_bad_options(tmp_path):
    from typer.testing import CliRunner

    from neko.cli import app

    r = CliRunner().invoke(app, ["data", "build", "--out", str(tmp_path), "--tasks", "asr,spelling"])
    assert r.exit_code == 2 and "unknown task" in r.output
    r = CliRunner().invoke(app, ["data", "build", "--out", str(tmp_path), "--size", "huge"])
    assert r.exit_code == 2 and "unknown size" in r.output
