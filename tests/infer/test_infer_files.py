from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from infer_helpers import sample_rows, write_rows

from neko.infer.files import correct_file
from neko.infer.options import CorrectionOptions
from neko.schema import example_from_dict


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_prediction_rows_keep_ids_inputs_and_order(tmp_path, model_dir, corrector):
    rows = sample_rows(5)
    src = write_rows(tmp_path / "in.jsonl", rows + [{"id": "bad", "task": "asr", "input": []}])
    out = tmp_path / "out.jsonl"
    summary = correct_file(model_dir, src, out, corrector=corrector, progress=False)
    got = _read(out)
    assert [r["id"] for r in got] == [r["id"] for r in rows]
    assert [r["input"] for r in got] == [r["input"] for r in rows]
    assert all(example_from_dict(r).output == r["output"] for r in got)  # still a valid neko row
    assert [r["prediction"] for r in got] == [c.text for c in corrector.correct(rows)]
    # no tuned policy: plain generation, so the prediction is the generated text
    assert all(r["prediction_generated"] == r["prediction"] for r in got)
    assert summary["rows"] == 5 and summary["invalid_rows"] == 1 and summary["resumed"] == 0
    assert "empty N-best" in (tmp_path / "out.jsonl.errors.jsonl").read_text()
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_item_errors_fall_back_to_one_best(tmp_path, model_dir, corrector):
    rows = [{"id": "a", "task": "nope", "input": "speech text"}, {"id": "b", "task": "ocr", "input": "hello"}]
    out = tmp_path / "out.jsonl"
    correct_file(model_dir, write_rows(tmp_path / "in.jsonl", rows), out, corrector=corrector, progress=False)
    a, b = _read(out)
    assert "unknown task" in a["error"] and a["prediction"] == "speech text"
    assert "error" not in b


def test_resume_after_torn_line_and_refuse_other_runs(tmp_path, model_dir, corrector):
    rows = sample_rows(6)
    src = write_rows(tmp_path / "in.jsonl", rows)
    full = tmp_path / "full.jsonl"
    correct_file(model_dir, src, full, corrector=corrector, progress=False)
    lines = full.read_text().splitlines()
    # Simulate a kill mid-write: two whole lines and half of a third, plus the run's fingerprint.
    out = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match="different input"):
        (tmp_path / "out.jsonl.partial").write_text(lines[0] + "\n")
        correct_file(model_dir, src, out, corrector=corrector, progress=False)
    (tmp_path / "out.jsonl.partial").unlink()
    from neko.infer import files

    fp = files._fingerprint(src, model_dir, None, corrector.options, (None, False, None, False))
    (tmp_path / "out.jsonl.partial.json").write_text(json.dumps({"fingerprint": fp}))
    (tmp_path / "out.jsonl.partial").write_text(lines[3] + "\n" + lines[1] + "\n" + lines[2][:10])
    summary = correct_file(model_dir, src, out, corrector=corrector, progress=False)
    assert summary["resumed"] == 2
    assert out.read_text() == full.read_text()


@pytest.mark.slow
def test_killed_run_resumes_every_id_exactly_once(tmp_path, model_dir):
    rows = sample_rows(30)
    src = write_rows(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial"
    cmd = [sys.executable, "-m", "neko", "correct", "--model", str(model_dir), "--input", str(src)]
    cmd += ["--output", str(out), "--batch-size", "1", "--max-new-tokens", "32"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            if partial.exists() and partial.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.01)
        assert proc.poll() is None, (
            "the run finished before it could be killed: " + proc.stderr.read().decode()
        )
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not out.exists()
    n_done = partial.read_bytes().count(b"\n")
    assert 3 <= n_done < 30
    options = CorrectionOptions(batch_size=16, max_new_tokens=32)  # batch size may change on resume
    summary = correct_file(model_dir, src, out, options=options, progress=False)
    assert summary["resumed"] >= n_done
    ids = [r["id"] for r in _read(out)]
    assert ids == [r["id"] for r in rows]  # every id exactly once, in input order
    assert not partial.exists()


@pytest.mark.parametrize("name", ["hyporadise.json", "coedit.jsonl", "pleias.csv"])
def test_other_formats_are_read_through_the_data_readers(tmp_path, model_dir, corrector, name):
    from neko.data.formats import read_any
    from neko.paths import SAMPLES_DIR

    out = tmp_path / "out.jsonl"
    summary = correct_file(model_dir, SAMPLES_DIR / name, out, corrector=corrector, progress=False)
    expected, _ = read_any(SAMPLES_DIR / name, skip_invalid=True)
    got = _read(out)
    assert [r["id"] for r in got] == [e.id for e in expected] and summary["rows"] == len(expected)
    assert all(isinstance(r["prediction"], str) for r in got)
