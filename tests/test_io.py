import json
import os
import socket
import stat
import subprocess
import sys
import threading

import pytest

from neko.io import (
    OutputError,
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_not_input,
    exclusive_lock,
)


def test_atomic_write_json_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "x.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_json(p, {"a": "ünï"})
    assert json.loads(p.read_text(encoding="utf-8")) == {"a": "ünï"}
    assert [f.name for f in p.parent.iterdir()] == ["x.json"]


def test_atomic_dir_publishes_on_success_and_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("killed half-way")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temp directory survives

    out.mkdir()  # an empty target is fine (created by a user or an earlier aborted call)
    with atomic_dir(out) as tmp:
        (tmp / "config.json").write_text("{}")
    assert (out / "config.json").is_file() and [p.name for p in tmp_path.iterdir()] == ["model"]

    with pytest.raises(ValueError, match="not empty; choose a new output directory"):
        with atomic_dir(out):
            pass


# ---- outputs that are not plain new files: nothing but the named file may change ----


def test_a_symlinked_output_rewrites_its_target_and_stays_a_link(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    target.chmod(0o644)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write_json(link, {"a": 1})
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text()) == {"a": 1}
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]


def test_a_fifo_output_is_written_through_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    atomic_write_bytes(fifo, b"rows\n")
    reader.join(timeout=30)
    assert got == [b"rows\n"]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_device_node_output_is_written_into_never_replaced(device_node):
    null = device_node("null", 1, 3)  # a real /dev/null, made in tmp_path
    atomic_write_text(null, "discarded\n")
    assert stat.S_ISCHR(null.lstat().st_mode) and os.major(null.lstat().st_rdev) == 1
    full = device_node("full", 1, 7)  # a real /dev/full: every write fails with ENOSPC
    with pytest.raises(
        OutputError, match=r"cannot write .*full: No space left on device; free some disk space"
    ):
        atomic_write_text(full, "x\n")
    assert stat.S_ISCHR(full.lstat().st_mode)


def test_new_files_follow_the_umask_and_existing_files_keep_their_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
        with atomic_dir(tmp_path / "model") as d:
            (d / "config.json").write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o750
    kept = tmp_path / "kept.txt"
    kept.write_text("x")
    kept.chmod(0o604)
    atomic_write_text(kept, "y")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o604 and kept.read_text() == "y"


def test_a_directory_or_socket_output_is_one_clear_error(tmp_path):
    with pytest.raises(OutputError, match=r"Is a directory; pass a file path"):
        atomic_write_text(tmp_path, "x")
    sock_path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        with pytest.raises(OutputError, match="is a socket, not a regular file"):
            atomic_write_text(sock_path, "x")
        assert stat.S_ISSOCK(sock_path.lstat().st_mode)


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temp(small_disk, fill_disk):
    out = small_disk / "out.json"
    atomic_write_json(out, {"old": True})
    fill_disk(small_disk)
    with pytest.raises(OutputError, match="No space left on device; free some disk space"):
        atomic_write_json(out, {"new": "x" * 100_000})
    assert json.loads(out.read_text()) == {"old": True}
    assert sorted(p.name for p in small_disk.iterdir()) == [".filler", "out.json"]


def test_an_output_that_is_an_input_is_refused(tmp_path):
    src = tmp_path / "data.jsonl"
    src.write_text("x")
    (tmp_path / "alias.jsonl").symlink_to(src)
    os.link(src, tmp_path / "hard.jsonl")
    for same in (src, tmp_path / "alias.jsonl", tmp_path / "hard.jsonl", tmp_path / "." / "data.jsonl"):
        with pytest.raises(ValueError, match="would overwrite the input"):
            check_not_input(same, tmp_path / "other.jsonl", src)
    check_not_input(tmp_path / "new.jsonl", src, None)


def test_a_lock_held_by_another_process_is_refused_then_free_again(tmp_path):
    lock = tmp_path / "out.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline() == b"locked\n"
        with pytest.raises(ValueError, match="busy"):
            with exclusive_lock(lock, "busy"):
                pass
    finally:
        holder.communicate(b"\n", timeout=30)
    with exclusive_lock(lock, "busy"):
        assert lock.exists()
    assert not lock.exists()


HOLD_LOCK = """
import sys
from neko.io import exclusive_lock
with exclusive_lock(sys.argv[1], "busy"):
    print("locked", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_dir_gives_every_file_the_umask_mode(tmp_path, umask):
    """safetensors writes 0600 whatever the umask; a model directory (upcycle, btx, the offline base)
    must not hold a 0600 model.safetensors beside 0644 files, nor anything more open than the umask."""
    import numpy as np
    from safetensors.numpy import save_file

    old = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "model") as d:
            save_file({"w": np.zeros(2, dtype=np.float32)}, str(d / "model.safetensors"))
            (d / "config.json").write_text("{}")
            (d / "sub").mkdir()
            (d / "sub" / "x.txt").write_text("x")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    modes = {
        p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in (tmp_path / "model").rglob("*")
        if p.is_file()
    }
    assert modes == dict.fromkeys(["model/model.safetensors", "model/config.json", "model/sub/x.txt"], want)
