from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def _piped_run(model_dir, rows_file, out, *, kill_after=None):
    """`cat rows_file | neko correct --input /dev/stdin --format neko ...`; killed (SIGKILL) once the
    partial holds ``kill_after`` rows, else run to the end. Returns (exit code, stderr)."""
    cmd = [sys.executable, "-m", "neko", "correct", "--model", str(model_dir), "--input", "/dev/stdin"]
    cmd += ["--format", "neko", "--output", str(out), "--batch-size", "1", "--max-new-tokens", "32"]
    cat = subprocess.Popen(["cat", str(rows_file)], stdout=subprocess.PIPE)  # a real pipe, as in a shell
    proc = subprocess.Popen(cmd, stdin=cat.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cat.stdout.close()
    partial = out.with_name(out.name + ".partial")
    try:
        if kill_after is not None:
            deadline = time.time() + 90
            while time.time() < deadline and proc.poll() is None:
                if partial.exists() and partial.read_bytes().count(b"\n") >= kill_after:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.01)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        cat.wait()
    return proc.returncode, err.decode()


@pytest.mark.slow
def test_a_piped_resume_never_mixes_two_inputs(tmp_path, model_dir):
    """Issue 23.2: the fingerprint hashed the drained pipe, so input B resumed input A's rows."""
    a_rows = sample_rows(30)
    b_rows = [
        {**r, "input": [h + " b" for h in r["input"]] if isinstance(r["input"], list) else r["input"] + " b"}
        for r in a_rows
    ]  # same ids, other text: what mixing would silently merge
    a, b = write_rows(tmp_path / "a.jsonl", a_rows), write_rows(tmp_path / "b.jsonl", b_rows)
    out = tmp_path / "out.jsonl"
    rc, err = _piped_run(model_dir, a, out, kill_after=3)
    assert rc == -signal.SIGKILL, f"the run finished before it could be killed: {err}"
    partial = out.with_name(out.name + ".partial")
    kept = partial.read_bytes()
    rc, err = _piped_run(model_dir, b, out)
    assert rc == 2 and "different input" in err and err.count("\n") == 1, err
    assert partial.read_bytes() == kept and not out.exists()  # A's finished rows are untouched
    rc, err = _piped_run(model_dir, a, out)  # the same input piped again resumes
    assert rc == 0, err
    got = _read(out)
    assert [r["id"] for r in got] == [r["id"] for r in a_rows]
    assert [r["input"] for r in got] == [r["input"] for r in a_rows]


def test_a_pipe_without_format_is_refused_before_it_is_read(tmp_path, model_dir, corrector):
    fifo = tmp_path / "rows"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"rows: a pipe or device has no file name .* pass --format"):
        correct_file(model_dir, fifo, tmp_path / "out.jsonl", corrector=corrector, progress=False)


def test_output_in_a_new_directory_is_created(tmp_path, model_dir, corrector):
    """Issue 23.4: `--output newdir/out.jsonl` failed on the lock file; `neko eval` creates newdir."""
    src = write_rows(tmp_path / "in.jsonl", sample_rows(2))
    out = tmp_path / "new" / "deeper" / "out.jsonl"
    correct_file(model_dir, src, out, corrector=corrector, progress=False)
    assert [r["id"] for r in _read(out)] == ["r0", "r1"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.jsonl"]


def test_a_device_output_needs_no_writable_directory(tmp_path, model_dir, corrector):
    """Issue 23.4: /dev/null inside a directory the user cannot write failed on `.lock`/`.partial`.
    A FIFO in a read-only directory stands for it; its reader gets every row and nothing is ever
    written beside it."""
    import threading

    src = write_rows(tmp_path / "in.jsonl", sample_rows(3))
    ro = tmp_path / "ro"
    ro.mkdir()
    fifo = ro / "out.fifo"
    os.mkfifo(fifo)
    got, seen = [], []

    def read():
        with open(fifo, "rb") as fh:  # opens once the run opens the output: its side files exist then
            seen.append(sorted(p.name for p in ro.iterdir()))
            got.append(fh.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ro.chmod(0o555)
    try:
        correct_file(model_dir, src, fifo, corrector=corrector, progress=False)
        reader.join(timeout=30)
    finally:
        ro.chmod(0o755)
    assert [json.loads(x)["id"] for x in got[0].splitlines()] == ["r0", "r1", "r2"]
    assert seen == [["out.fifo"]]  # nothing was written beside it (root could have, so it is checked)
    correct_file(model_dir, src, "/dev/null", corrector=corrector, progress=False)
    assert not list(Path("/dev").glob("null.*"))


def test_two_runs_writing_one_file_through_a_link_meet_on_one_lock(tmp_path, model_dir, corrector):
    """Issue 23.4: the lock was taken on the link's name, so a run through a link and a run on the
    file itself both ran and the last writer won. The lock belongs to the resolved target."""
    from neko.io import exclusive_lock

    src = write_rows(tmp_path / "in.jsonl", sample_rows(2))
    real = tmp_path / "real" / "out.jsonl"
    real.parent.mkdir()
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    with exclusive_lock(tmp_path / "real" / "out.jsonl.lock", "held"):  # as a run writing `real` holds it
        with pytest.raises(ValueError, match="another `neko correct` is writing this output"):
            correct_file(model_dir, src, link, corrector=corrector, progress=False)
    assert not real.exists() and link.is_symlink()
    correct_file(model_dir, src, link, corrector=corrector, progress=False)
    assert link.is_symlink() and [r["id"] for r in _read(real)] == ["r0", "r1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "link.jsonl", "real"]


def test_side_files_of_a_private_output_are_private(tmp_path, model_dir):
    """Issue 23.8: the .partial of a 0600 output was 0644 and held the rows."""
    import stat
    import threading

    src = write_rows(tmp_path / "in.jsonl", sample_rows(12) + [{"id": "bad", "task": "asr", "input": []}])
    out = tmp_path / "out.jsonl"
    out.write_text("old results\n")
    out.chmod(0o600)
    partial, seen, done = tmp_path / "out.jsonl.partial", set(), threading.Event()

    def watch():  # bounded: stops when the run ends
        while not done.is_set():
            for side in (partial, tmp_path / "out.jsonl.partial.json"):
                try:
                    st = side.stat()
                except FileNotFoundError:
                    continue
                if st.st_size:
                    seen.add((side.name, stat.S_IMODE(st.st_mode)))
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        options = CorrectionOptions(batch_size=1, max_new_tokens=8)
        correct_file(model_dir, src, out, options=options, progress=False)
    finally:
        done.set()
        watcher.join(timeout=10)
    assert ("out.jsonl.partial", 0o600) in seen and {m for _, m in seen} == {0o600}, seen
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "out.jsonl.errors.jsonl").stat().st_mode) == 0o600
