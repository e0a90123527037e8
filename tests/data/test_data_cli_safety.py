"""`neko data convert` / `neko data stats` never destroy what they were not asked to write, and
every bad input or output is one `error:` line (real files, links, FIFOs, device nodes, full disks)."""

from __future__ import annotations

import json
import stat
import threading

import pytest

from neko.schema import read_jsonl


@pytest.fixture
def rows_file(samples, tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_bytes((samples / "neko.jsonl").read_bytes())
    return src


def test_convert_and_stats_refuse_to_overwrite_their_input(neko_cli, one_line_error, rows_file, tmp_path):
    before = rows_file.read_bytes()
    alias = tmp_path / "alias.jsonl"
    alias.symlink_to(rows_file)
    for out in (rows_file, alias):
        res = neko_cli("data", "convert", rows_file, out)
        one_line_error(res, f"output {out} is the input", "choose another output path")
        res = neko_cli("data", "stats", rows_file, "--json", out)
        one_line_error(res, f"output {out} is the input")
    assert rows_file.read_bytes() == before and alias.is_symlink()


def test_convert_writes_into_a_device_a_fifo_and_through_a_symlink(neko_cli, device_node, rows_file, tmp_path):
    null = device_node("null", 1, 3)  # what `neko data convert x.jsonl /dev/null` met as root
    res = neko_cli("data", "convert", rows_file, null)
    assert res.exit_code == 0, res.output
    assert stat.S_ISCHR(null.lstat().st_mode)

    fifo = tmp_path / "pipe.jsonl"
    import os

    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert neko_cli("data", "convert", rows_file, fifo).exit_code == 0
    reader.join(timeout=60)
    assert len(got[0].splitlines()) == 6 and stat.S_ISFIFO(fifo.lstat().st_mode)

    real = tmp_path / "real.jsonl"
    real.write_text("")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    assert neko_cli("data", "convert", rows_file, link).exit_code == 0
    assert link.is_symlink() and len(read_jsonl(real)) == 6


def test_outputs_that_cannot_be_written_are_one_line_errors(
    neko_cli, one_line_error, device_node, read_only_dir, small_disk, fill_disk, rows_file, tmp_path
):
    fill_disk(small_disk)
    cases = [
        (tmp_path, "Is a directory; pass a file path"),
        (read_only_dir / "out.jsonl", "choose a location you may write to"),
        (small_disk / "out.jsonl", "No space left on device"),
        (device_node("full", 1, 7), "No space left on device"),
    ]
    for out, fix in cases:
        one_line_error(neko_cli("data", "convert", rows_file, out), f"cannot write {out}", fix)
        one_line_error(neko_cli("data", "stats", rows_file, "--json", out), f"cannot write {out}", fix)


def test_a_directory_or_binary_tasks_config_is_one_line_error(neko_cli, one_line_error, rows_file, tmp_path):
    res = neko_cli("data", "convert", rows_file, tmp_path / "o.jsonl", "--tasks-config", tmp_path)
    one_line_error(res, "is a directory; pass the tasks config file")
    binary = tmp_path / "tasks.yaml"
    binary.write_bytes(bytes(range(256)))
    res = neko_cli("data", "stats", rows_file, "--tasks-config", binary)
    one_line_error(res, f"{binary}: not UTF-8")


def test_a_lone_surrogate_escape_names_its_line_and_is_skippable(neko_cli, one_line_error, tmp_path):
    src = tmp_path / "s.jsonl"
    good = {"id": "a", "task": "ocr", "input": "fine"}
    src.write_text(json.dumps(good) + "\n" + '{"id": "b", "task": "ocr", "input": "bad \\ud800 text"}\n')
    out = tmp_path / "out.jsonl"
    res = neko_cli("data", "convert", src, out)
    one_line_error(res, f"{src}:2: field 'input'", "lone surrogate")
    assert not out.exists()
    res = neko_cli("data", "convert", src, out, "--skip-invalid")
    assert res.exit_code == 0 and "not-utf8: 1" in res.output
    assert [r.id for r in read_jsonl(out)] == ["a"]


def test_a_csv_with_neko_columns_is_named_as_csv_and_exits_2(neko_cli, one_line_error, tmp_path):
    """Issue 23.9: reported as malformed JSON on its header line, and with exit 1."""
    src = tmp_path / "rows.csv"
    src.write_text("id,task,input,output\na,ocr,teh cat,the cat\n")
    err = one_line_error(neko_cli("data", "convert", src, tmp_path / "o.jsonl"), f"{src}: a CSV file")
    assert "malformed JSON" not in err and not (tmp_path / "o.jsonl").exists()
