"""Fixtures every test area can use: real special files and a real full disk."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def device_node(tmp_path):
    """Make a real character device node in tmp_path (never touch /dev itself): name, (major, minor)."""

    def make(name: str, major: int, minor: int) -> Path:
        path = tmp_path / name
        try:
            os.mknod(path, 0o666 | 0o020000, os.makedev(major, minor))  # S_IFCHR
        except PermissionError:
            pytest.skip("making a device node needs root")
        return path

    return make


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a real tmpfs of ``size`` (e.g. "64k") in tmp_path: a real full disk is the kernel's
    ENOSPC and a real read-only one its EROFS, nothing simulated. Skips where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(size: str, *, read_only: bool = False) -> Path:
        mnt = tmp_path / f"tmpfs{len(mounted)}"
        mnt.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode(errors='replace').strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def small_disk(tmpfs):
    """A real 64 KiB file system."""
    return tmpfs("64k")


@pytest.fixture
def read_only_dir(tmp_path, tmpfs):
    """A directory nobody may write into, root included: a read-only tmpfs (a 0555 directory
    stops only non-root users, and CI may run as root)."""
    if os.geteuid() != 0:
        ro = tmp_path / "read_only"
        ro.mkdir()
        ro.chmod(0o555)
        yield ro
        ro.chmod(0o755)
        return
    yield tmpfs("64k", read_only=True)


@pytest.fixture
def fill_disk():
    """Write a filler file into a directory until its file system says ENOSPC."""

    def fill(directory: Path) -> None:
        with open(directory / ".filler", "wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError:
                pass

    return fill


@pytest.fixture
def neko_cli():
    """Run the real `neko` app in-process (every command with its error handling, as `python -m neko`)."""
    from typer.testing import CliRunner

    from neko.cli import app

    def run(*args: object):
        return CliRunner().invoke(app, [str(a) for a in args])

    return run


@pytest.fixture
def one_line_error():
    """Check that a command failed the way a user should see it: exit 2 (or ``code``), one stderr
    line ``error: ...`` (a config error may list its problems below it) holding every fragment, and
    no exception escaping (no traceback)."""

    def check(res, *fragments: str, code: int = 2) -> str:
        assert isinstance(res.exception, SystemExit), f"escaped: {res.exception!r}\n{res.output}"
        assert res.exit_code == code and "Traceback" not in res.output, res.output
        lines = res.stderr.splitlines()
        starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
        assert len(starts) == 1, res.output
        err = "\n".join(lines[starts[0] :])
        for f in fragments:
            assert f in err, f"{f!r} not in {err!r}"
        return err

    return check
