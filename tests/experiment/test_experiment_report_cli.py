"""`neko report` on every kind of bad results file or README: one error line naming it, never a traceback."""

from __future__ import annotations

import json
import subprocess

import pytest

MARKED = "intro\n<!-- neko:quickstart:start -->\nold\n<!-- neko:quickstart:end -->\n"
GOOD = {"table_markdown": "| a |\n", "elapsed_s": 3.0, "config": {"precision": "fp32"}}


@pytest.fixture
def readme(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(MARKED)
    return path


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("quickstart.json", b"", "not a results file (not JSON"),
        ("quickstart.json", b"not json", "not a results file (not JSON"),
        ("quickstart.json", bytes(range(256)), "not a results file (not UTF-8 text"),
        ("quickstart.json", b"[1, 2]", "a JSON list, not an object"),
        ("quickstart.json", b"null", "a JSON NoneType, not an object"),
        ("quickstart.json", b"[" * 100_000, "not a results file (not JSON"),
        ("quickstart.json", b"{}", "missing or malformed 'table_markdown'"),
        ("quickstart.json", b'{"table_markdown": 5}', "table_markdown is a int, not text"),
        (
            "quickstart.json",
            b'{"table_markdown": "x", "config": 3}',
            "not a complete `neko quickstart` results",
        ),
        (
            "quickstart.json",
            b'{"table_markdown": "x", "elapsed_s": "slow"}',
            "not a complete `neko quickstart`",
        ),
        ("experiment.json", json.dumps(GOOD).encode(), "not a complete `neko experiment` results file"),
        ("experiment.json", b'{"table_markdown": "x", "config": {"steps": 1}, "averages": 3}', "experiment"),
    ],
)
def test_bad_results_files(neko_cli, one_line_error, readme, tmp_path, name, content, fragment):
    results = tmp_path / name
    results.write_bytes(content)
    one_line_error(neko_cli("report", results, "--readme", readme), str(results), fragment)
    assert readme.read_text() == MARKED


def test_bad_readmes(neko_cli, one_line_error, tmpfs, tmp_path):
    results = tmp_path / "quickstart.json"
    results.write_text(json.dumps(GOOD))
    binary = tmp_path / "bin.md"
    binary.write_bytes(bytes(range(256)))
    cases = [
        (tmp_path / "nope.md", "README not found"),
        (tmp_path, "is a directory; pass the README file"),
        (binary, "not UTF-8 text"),
    ]
    for path, fragment in cases:
        one_line_error(neko_cli("report", results, "--readme", path), str(path), fragment)
    # a README that can be read but not replaced: on a file system remounted read-only
    disk = tmpfs("64k")
    (disk / "README.md").write_text(MARKED)
    if subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True).returncode != 0:
        pytest.skip("cannot remount read-only here")
    res = neko_cli("report", results, "--readme", disk / "README.md")
    one_line_error(res, f"cannot write {disk / 'README.md'}", "Read-only file system")


def test_a_benchmark_dir_without_splits_or_with_bad_rows(neko_cli, one_line_error, readme, tmp_path):
    empty = tmp_path / "bench"
    empty.mkdir()
    one_line_error(neko_cli("report", empty, "--readme", readme), str(empty / "train.jsonl"), "no such file")
    for split in ("train", "dev", "test"):
        (empty / f"{split}.jsonl").write_text('{"id": "a", "task": "ocr"}\n')
    one_line_error(neko_cli("report", empty, "--readme", readme), "train.jsonl:1: field 'input': missing")


def test_a_good_results_file_still_updates_the_readme(neko_cli, readme, tmp_path):
    results = tmp_path / "quickstart.json"
    results.write_text(json.dumps(GOOD))
    res = neko_cli("report", results, "--readme", readme)
    assert res.exit_code == 0, res.output
    assert "| a |" in readme.read_text() and "old" not in readme.read_text()
