"""Atomic replacement of a host file: temp file in the same dir, fsync, rename."""

# Optional[...] as in mmbatch.config (Python 3.9 syntax).
# ruff: noqa: UP045

from __future__ import annotations

import os
import tempfile
from typing import Callable, Optional

Check = Callable[[str], None]


def _write_temp(path: str, data: bytes, mode: int) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_atomic(path: str, data: bytes, mode: Optional[int] = None, check: Optional[Check] = None) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never half.

    Without `mode` the file keeps the mode and owner of the file it replaces
    (0644 for a new file). `check(temp_path)` may raise to abandon the write.
    """
    try:
        old: Optional[os.stat_result] = os.stat(path)
    except FileNotFoundError:
        old = None
    if mode is None:
        mode = (old.st_mode & 0o7777) if old else 0o644
    tmp = _write_temp(path, data, mode)
    try:
        if old is not None and os.geteuid() == 0:
            os.chown(tmp, old.st_uid, old.st_gid)
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def create_exclusive(path: str, data: bytes, mode: int, check: Optional[Check] = None) -> bool:
    """Create `path` complete and checked, never replacing an existing file.

    Returns False (and writes nothing) when `path` already exists: the link
    that publishes the file fails instead of overwriting.
    """
    tmp = _write_temp(path, data, mode)
    try:
        if check is not None:
            check(tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        _unlink(tmp)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return True


def fsync_dir(directory: str) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_text(path: str) -> Optional[str]:
    """The file's text (line endings kept), or None when it does not exist."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except FileNotFoundError:
        return None
