"""Safe file output: every file neko writes appears whole or not at all, and nothing else is harmed.

Write to a temporary file in the same directory, fsync, then ``os.replace`` (atomic on POSIX), so a
``kill -9`` mid-write leaves either the old file or the new one, never half of one.

Design choices (each one a way an output path can destroy something it does not name):
- A symlink is followed: its target is rewritten and the link stays a link.
- A character device or FIFO (``/dev/null``, ``/dev/stdout``, a named pipe) is written into, as a
  shell redirect would; renaming over it would replace the device with a regular file. Other
  special files (block devices, sockets) and directories are refused.
- A new file gets the permissions the umask allows (``open``'s default), an existing one keeps its
  mode and, where allowed, its owner. A new directory's files are settled to that mode before it is
  renamed into place (:func:`settle_file_modes`): safetensors writes its files 0600 whatever the
  umask, which left ``model.safetensors`` 0600 beside 0644 files.
- An output that is also an input is refused before anything is read (:func:`check_not_input`).
- Failures are one :class:`OutputError` naming the path and the fix, never a bare ``OSError``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "OutputError",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_dir",
    "check_new_dir",
    "check_not_input",
    "exclusive_lock",
    "os_error_message",
    "new_file_mode",
    "settle_file_modes",
]

# What to do about a failed write, by errno; anything else: choose another path.
_FIXES = {
    errno.ENOSPC: "free some disk space or write to another disk",
    errno.EDQUOT: "free some of your disk quota or write elsewhere",
    errno.EACCES: "choose a location you may write to",
    errno.EPERM: "choose a location you may write to",
    errno.EROFS: "choose a location you may write to",
    errno.EISDIR: "pass a file path, not a directory",
    errno.ENOTDIR: "a parent of the path is a file, not a directory",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EFBIG: "the file is larger than this system allows; write less or elsewhere",
}


class OutputError(ValueError):
    """An output that cannot be written. A ValueError, so the CLIs report it like other bad input."""


def os_error_message(e: OSError, path: str | Path | None = None) -> str:
    """One line for an ``OSError``: which file, what happened, what to do."""
    where = path if path is not None else e.filename
    text = e.strerror or str(e)
    msg = f"{where}: {text}" if where is not None else text
    fix = _FIXES.get(e.errno or 0)
    return f"{msg}; {fix}" if fix else msg


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _create_temp(parent: Path, name: str, *, directory: bool = False) -> Path:
    """A new uniquely named sibling, created with the mode ``open``/``mkdir`` would give (the umask
    applies; ``tempfile`` would make it 0600/0700, and ``os.replace`` would carry that over)."""
    for _ in range(100):
        tmp = parent / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            if directory:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent))


def _write(path: Path, data: bytes) -> None:
    target = Path(os.path.realpath(path))  # a symlink is followed; the link itself stays
    try:
        st = target.stat()
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
            with open(target, "wb") as fh:  # write through, as `> /dev/null` does
                fh.write(data)
            return
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        raise OutputError(f"{path}: is a {_kind(st.st_mode)}, not a regular file; choose a file path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(target.parent, target.name)
    try:
        with open(tmp, "wb") as fh:
            if st is not None:  # an existing file keeps its permissions (and owner, where allowed)
                os.fchmod(fh.fileno(), stat.S_IMODE(st.st_mode))
                try:
                    os.fchown(fh.fileno(), st.st_uid, st.st_gid)
                except PermissionError:
                    pass
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically (see the module docstring for special files)."""
    path = Path(path)
    try:
        _write(path, data)
    except OSError as e:
        raise OutputError(f"cannot write {os_error_message(e, path)}") from None
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # also catches hard links and symlinks
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def check_not_input(output: str | Path, *inputs: str | Path | None, what: str = "output") -> None:
    """Refuse an output that is one of the inputs (after resolving links): writing it would replace
    the very data being read, and a failure half-way would lose it."""
    for inp in inputs:
        if inp is not None and _same_file(Path(output), Path(inp)):
            raise ValueError(
                f"{what} {output} is the input {inp}; writing it would overwrite the input: "
                "choose another output path"
            )


def check_new_dir(path: str | Path) -> Path:
    """Refuse to write a model into a directory that already holds something (never overwrite work)."""
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not empty; choose a new output directory")
    return out


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to fill; on success it is renamed to ``path``.

    A directory (a model checkpoint) is then either complete or absent, whatever kills the process;
    on an exception the partial directory is removed. ``path`` must be absent or empty; a symlink to
    an empty directory is followed."""
    out = Path(os.path.realpath(check_new_dir(path)))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp(out.parent, out.name, directory=True)
    except OSError as e:
        raise OutputError(f"cannot write {os_error_message(e, path)}") from None
    try:
        yield tmp
        settle_file_modes(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        failed = _as_os_error(e)
        if failed is not None:  # e.g. the disk filled while the model was saved
            raise OutputError(f"cannot write {os_error_message(failed, path)}") from None
        raise


def new_file_mode(directory: str | Path) -> int:
    """The mode ``open`` gives a new file in ``directory``: 0666 less the umask (or what a default
    ACL allows). Read from a probe file: ``os.umask`` can only be read by setting it, for every thread."""
    probe = Path(directory) / f".mode-probe-{secrets.token_hex(4)}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        return stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
        probe.unlink()


def settle_file_modes(directory: str | Path) -> None:
    """Give every regular file under ``directory`` the mode a new file there gets from ``open``."""
    root = Path(directory)
    mode = new_file_mode(root)
    for f in root.rglob("*"):
        st = f.lstat()
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
            os.chmod(f, mode)


_WRAPPED_OS_ERROR = re.compile(r"I/O error: (.*?) \(os error (\d+)\)")


def _as_os_error(e: BaseException) -> OSError | None:
    """The OS error behind a failed write: an OSError, or one that safetensors' Rust writer wrapped
    in a SafetensorError ("I/O error: No space left on device (os error 28)")."""
    if isinstance(e, OSError):
        return e
    m = _WRAPPED_OS_ERROR.search(str(e)) if type(e).__name__ == "SafetensorError" else None
    return OSError(int(m.group(2)), m.group(1)) if m else None


@contextmanager
def exclusive_lock(path: str | Path, busy: str) -> Iterator[None]:
    """Hold ``path`` as a lock file while the block runs; ``ValueError(busy)`` if another process holds it.

    The lock is ``flock``'s, so the kernel releases it when a holder dies (a ``kill -9`` leaves at most
    a stale, unlocked file, which the next run simply takes). The file is removed on exit."""
    path = Path(path)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise OutputError(f"cannot write {os_error_message(e, path)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(busy) from None
        # The previous holder may have removed the file between our open and our lock: then we
        # hold a lock on a deleted file that nobody else can see; take the new file instead.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
