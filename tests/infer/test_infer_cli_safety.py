"""`neko correct` and `neko serve`: right exit codes, one-line errors, nothing lost or left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from infer_helpers import sample_rows, write_rows

from neko.infer import files
from neko.infer.files import correct_file

FAST = ("--max-new-tokens", 2, "--batch-size", 4)


def _leftovers(out) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name))


def _correct(neko_cli, model_dir, src, out, *extra):
    return neko_cli("correct", "--model", model_dir, "--input", src, "--output", out, *FAST, *extra)


def test_correct_refuses_to_overwrite_its_input(neko_cli, one_line_error, model_dir, tmp_path):
    src = write_rows(tmp_path / "in.jsonl", sample_rows(3))
    before = src.read_bytes()
    alias = tmp_path / "alias.jsonl"
    alias.symlink_to(src)
    for out in (src, alias):
        one_line_error(_correct(neko_cli, model_dir, src, out), f"output {out} is the input")
    assert src.read_bytes() == before and _leftovers(src) == ["in.jsonl"]


@pytest.mark.parametrize(
    "content, why",
    [(bytes(range(256)) * 8, "rows are invalid, the first:"), (b"", "the file holds no rows")],
    ids=["binary", "empty"],
)
def test_binary_or_empty_input_fails_instead_of_an_empty_output(
    neko_cli, one_line_error, model_dir, tmp_path, content, why
):
    src = tmp_path / "in.jsonl"
    src.write_bytes(content)
    out = tmp_path / "out.jsonl"
    one_line_error(_correct(neko_cli, model_dir, src, out), f"{src}: nothing to correct (", why)
    assert _leftovers(out) == []


def test_max_rows_must_be_positive(neko_cli, one_line_error, model_dir, tmp_path):
    src = write_rows(tmp_path / "in.jsonl", sample_rows(3))
    out = tmp_path / "out.jsonl"
    for n in (-1, 0):  # -1 used to drop the last row silently
        res = _correct(neko_cli, model_dir, src, out, "--max-rows", n)
        one_line_error(res, f"max_rows must be a positive number of rows, got {n}")
    assert _leftovers(out) == []


def test_a_failed_run_leaves_no_sidecar_files(neko_cli, one_line_error, model_dir, tmp_path):
    src = write_rows(tmp_path / "in.jsonl", sample_rows(3))
    out = tmp_path / "out.jsonl"
    one_line_error(
        _correct(neko_cli, model_dir, src, out, "--device", "bogus"), "device 'bogus' is not a torch"
    )
    assert _leftovers(out) == []
    broken = tmp_path / "broken_model"
    broken.mkdir()
    for f in model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\0" * 64)  # damaged weights: fails after the run began
    one_line_error(_correct(neko_cli, broken, src, out), "could not load the model weights")
    assert _leftovers(out) == []


def test_outputs_that_cannot_be_written_are_one_line_errors(
    neko_cli, one_line_error, model_dir, read_only_dir, tmp_path
):
    src = write_rows(tmp_path / "in.jsonl", sample_rows(3))
    one_line_error(_correct(neko_cli, model_dir, src, tmp_path), f"{tmp_path}: is a directory")
    out = read_only_dir / "out.jsonl"
    one_line_error(_correct(neko_cli, model_dir, src, out), f"cannot write {out}")


def test_a_disk_that_fills_while_correcting_is_one_line(
    neko_cli, one_line_error, model_dir, small_disk, fill_disk, tmp_path
):
    src = write_rows(tmp_path / "in.jsonl", sample_rows(8))
    fill_disk(small_disk)
    filler = small_disk / ".filler"
    os.truncate(
        filler, filler.stat().st_size - 4096
    )  # one free page: the run's fingerprint fits, its rows do not
    out = small_disk / "out.jsonl"
    res = _correct(neko_cli, model_dir, src, out)
    one_line_error(res, f"cannot write {out}.partial: No space left on device; free some disk space")
    assert _leftovers(out) == []  # no row was finished, so nothing is kept


def test_a_damaged_partial_file_names_its_line(tmp_path, model_dir, corrector):
    src = write_rows(tmp_path / "in.jsonl", sample_rows(4))
    out = tmp_path / "out.jsonl"
    fp = files._fingerprint(src, model_dir, None, corrector.options, (None, False, None, False))
    (tmp_path / "out.jsonl.partial.json").write_text(json.dumps({"fingerprint": fp}))
    (tmp_path / "out.jsonl.partial").write_text('{"id": "r0", "prediction": "x"}\n{"prediction": "no id"}\n')
    with pytest.raises(
        ValueError, match=r"out\.jsonl\.partial:2: not a row written by `neko correct` \(no 'id'\)"
    ):
        correct_file(model_dir, src, out, corrector=corrector, progress=False)
    assert (tmp_path / "out.jsonl.partial").exists()  # never thrown away: the user decides


HOLD = """
import sys
from neko.io import exclusive_lock
with exclusive_lock(sys.argv[1], "busy"):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_two_runs_on_one_output_cannot_race(neko_cli, one_line_error, model_dir, tmp_path):
    src = write_rows(tmp_path / "in.jsonl", sample_rows(3))
    out = tmp_path / "out.jsonl"
    # Another process holds the output's lock, as a second `neko correct` running now would.
    other = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "out.jsonl.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert other.stdout.readline() == b"locked\n"
        res = _correct(neko_cli, model_dir, src, out)
        one_line_error(res, f"{out}: another `neko correct` is writing this output right now")
        assert not out.exists() and not (tmp_path / "out.jsonl.partial").exists()
    finally:
        other.communicate(b"\n", timeout=30)
    assert _correct(neko_cli, model_dir, src, out).exit_code == 0
    assert len(out.read_text().splitlines()) == 3 and _leftovers(out) == ["out.jsonl"]


def test_serve_rejects_bad_port_and_open_host_in_one_line(neko_cli, one_line_error, model_dir):
    one_line_error(
        neko_cli("serve", "--model", model_dir, "--port", 99999), "port must be between 0 and 65535"
    )
    res = neko_cli("serve", "--model", model_dir, "--host", "0.0.0.0")
    one_line_error(res, "refusing to serve on 0.0.0.0 without an API key", "--insecure")


@pytest.mark.parametrize("repeats", [200, 20_000])
def test_a_template_that_repeats_its_input_is_refused_at_start(
    neko_cli, one_line_error, model_dir, tmp_path, repeats
):
    """Issue 23.3: `{text:1000}` x 20,000 in neko_prompts.json grew `neko correct` to 19.9 GB.
    Refused when the model directory is loaded, before a prompt is built, by correct and serve."""
    import shutil
    import time
    import tracemalloc

    bad = tmp_path / "model"
    shutil.copytree(model_dir, bad)
    cfg = json.loads((bad / "neko_prompts.json").read_text())
    asr = next(t for t in cfg["tasks"] if t["name"] == "asr")
    asr["template"] = "{hypotheses}" + "{text:1000}" * repeats
    (bad / "neko_prompts.json").write_text(json.dumps(cfg))
    src = write_rows(tmp_path / "in.jsonl", sample_rows(4))
    out = tmp_path / "out.jsonl"
    tracemalloc.start()
    t0 = time.perf_counter()
    one_line_error(
        _correct(neko_cli, bad, src, out), "neko_prompts.json", "'asr'", "and 8 fields", "fix that task"
    )
    one_line_error(neko_cli("serve", "--model", bad, "--port", 0), "neko_prompts.json", "and 8 fields")
    seconds, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 30 and peak < 200 * 2**20, (seconds, peak)
    assert _leftovers(out) == []


def test_a_prompt_is_bounded_before_it_is_built(model_dir):
    """A template within the limits still cannot make one item's prompt unbounded: its size is
    computed from the field values first, and an item over the bound fails alone."""
    from neko.infer.correct import Corrector
    from neko.infer.options import CorrectionOptions
    from neko.schema import Example
    from neko.tasks import Task, load_prompt_config, render_body

    task = Task("wide", "{text:1000}" * 8, "text")
    ex = Example(id="a", task="wide", input="x " * 20)
    assert render_body(ex, task, max_chars=8000) == task.template.format(text="x " * 19 + "x")
    with pytest.raises(ValueError, match="would be 8000 characters, over the limit of 7999"):
        render_body(ex, task, max_chars=7999)
    registry, _ = load_prompt_config(model_dir)
    registry.register(Task("wide", "{text}" * 8, "text"))
    c = Corrector.from_pretrained(model_dir, CorrectionOptions(max_input_chars=1000, max_new_tokens=2))
    c.registry = registry
    big, small = (
        c.prepare({"id": "b", "task": "wide", "input": "y" * 999}),
        c.prepare({"task": "ocr", "input": "ok"}),
    )
    assert "would be 7992 characters, over the limit of 4048" in big.error and big.prompt is None
    assert small.error is None


def test_serve_refuses_a_nan_timeout_at_start(neko_cli, one_line_error, model_dir):
    """Issue 23.6: `neko serve --timeout nan` started and answered every request 504."""
    for flag in ("--timeout", "--max-wait-ms"):
        one_line_error(neko_cli("serve", "--model", model_dir, flag, "nan"), "finite number", "got nan")


def test_an_unknown_policy_key_is_refused_not_ignored(neko_cli, one_line_error, model_dir, tmp_path):
    """Issue 23.6: a misspelt top-level key in neko_policy.json was silently ignored."""
    import shutil

    from neko.infer.policy import Policy, TaskPolicy

    bad = tmp_path / "model"
    shutil.copytree(model_dir, bad)
    policy = Policy({}, TaskPolicy("keep"), TaskPolicy("keep"), {}).to_dict()
    policy["per_tasks"] = policy.pop("per_task")
    (bad / "neko_policy.json").write_text(json.dumps(policy))
    src = write_rows(tmp_path / "in.jsonl", sample_rows(2))
    out = tmp_path / "out.jsonl"
    one_line_error(
        _correct(neko_cli, bad, src, out), "neko_policy.json", "unknown top-level key(s) ['per_tasks']"
    )
    assert _leftovers(out) == []


def test_misleading_input_messages(neko_cli, one_line_error, model_dir, tmp_path):
    """Issue 23.9: a CSV with neko's column names was "malformed JSON"; an over-long row suggested
    --truncate-chars, which `correct` does not have."""
    from neko.schema import MAX_TEXT_CHARS

    out = tmp_path / "out.jsonl"
    csv = tmp_path / "rows.csv"
    csv.write_text("id,task,input,output\na,ocr,teh cat,the cat\n")
    err = one_line_error(_correct(neko_cli, model_dir, csv, out), "a CSV file", "save the rows as JSONL")
    assert "malformed JSON" not in err
    long = write_rows(
        tmp_path / "long.jsonl", [{"id": "a", "task": "ocr", "input": "x" * (MAX_TEXT_CHARS + 1)}]
    )
    one_line_error(_correct(neko_cli, model_dir, long, out), "`neko data convert --truncate-chars N` before")
    assert _leftovers(out) == []
