"""The file-system object store: a local path or a mounted shared file system.

Works the same on local disk, FSx for Lustre, EFS (NFS) and JuiceFS. A put
writes a temp name in the object's own directory (so the rename never
crosses file systems), fsyncs it, renames it into place and fsyncs the
directory: after a crash an object is either whole or absent. Directories
are 0700 and files 0600 whatever the umask, because checkpoint images hold
the job's memory and its secrets. Temp names start with the reserved
`.mmbatch-` prefix, which no key can use, and listings skip them.

A key maps to `<root>/<key>`; keys are validated (see base.validate_key),
so nothing outside the root can be named. Directories are an
implementation detail: a delete removes parents left empty, and a put
recreates them (retrying when a concurrent delete removed one).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat as stat_mod
import time
from typing import Callable, Iterator, List, Optional

from mmbatch.errors import ObjectNotFound, StoreError
from mmbatch.store.base import RESERVED_PREFIX, ObjectInfo, ObjectStore, validate_key, validate_prefix

_TMP_PREFIX = RESERVED_PREFIX + "tmp-"
_COPY_BLOCK = 8 * 1024 * 1024
_PUT_ATTEMPTS = 5

_MISSING = (errno.ENOENT, errno.ENOTDIR)
_FULL = (errno.ENOSPC, errno.EDQUOT)
_DENIED = (errno.EACCES, errno.EPERM)
_UNREACHABLE = tuple(
    getattr(errno, name)
    for name in ("ENOTCONN", "ESTALE", "EIO", "ETIMEDOUT", "EHOSTDOWN", "EHOSTUNREACH", "ENODEV", "ENXIO",
                 "ECONNREFUSED", "ECONNABORTED", "ECONNRESET", "ESHUTDOWN", "EREMOTEIO")
    if hasattr(errno, name)
)


def _hint_for(err: OSError, root: str) -> Optional[str]:
    if err.errno in _FULL:
        return (
            "the store's file system is full (or over quota): free space there, grow it, "
            "or keep fewer checkpoints (checkpoint.keep)"
        )
    if err.errno in _DENIED:
        return (
            f"permission denied under {root}: mmbatchd must own it and be able to write it "
            "(on NFS/EFS check root squashing and the access point's POSIX user)"
        )
    if err.errno == errno.EROFS:
        return f"{root} is on a read-only file system: remount it read-write or point store.url elsewhere"
    if err.errno in _UNREACHABLE:
        return f"the store at {root} is unreachable: is the shared file system mounted and healthy?"
    if err.errno == errno.ENAMETOOLONG:
        return "the path is too long for this file system: use a shorter store root"
    return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _copy_fd(src: int, dst: int) -> None:
    """Copy src to dst from their current positions (sendfile, read/write fallback)."""
    try:
        while True:
            n = os.sendfile(dst, src, None, _COPY_BLOCK)
            if n == 0:
                return
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while True:
        block = os.read(src, _COPY_BLOCK)
        if not block:
            return
        _write_all(dst, block)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        # Some FUSE and network file systems refuse fsync on directories.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise
    finally:
        os.close(fd)


class FsObjectStore(ObjectStore):
    """Objects as files under `root` (created 0700 when missing)."""

    def __init__(self, root: str, *, create: bool = True) -> None:
        if not root or "\0" in root:
            raise StoreError(f"invalid store path {root!r}")
        self._root = os.path.abspath(root)
        try:
            st = os.stat(self._root)
        except FileNotFoundError:
            if not create:
                raise StoreError(
                    f"store path {self._root} does not exist",
                    hint="create it, or mount the shared file system there",
                ) from None
            try:
                os.makedirs(self._root, mode=0o700, exist_ok=True)
                os.chmod(self._root, 0o700)
            except OSError as e:
                raise self._error(e, "create the store directory", "") from e
        except OSError as e:
            raise self._error(e, "open the store directory", "") from e
        else:
            if not stat_mod.S_ISDIR(st.st_mode):
                raise StoreError(f"store path {self._root} is not a directory")

    @property
    def root(self) -> str:
        return self._root

    @property
    def url(self) -> str:
        return "file://" + self._root

    def describe(self) -> str:
        return f"file store at {self._root}"

    # -- paths and errors -------------------------------------------------

    def _path(self, key: str) -> str:
        validate_key(key)
        return os.path.join(self._root, *key.split("/"))

    def _error(self, err: OSError, op: str, key: str, *, missing_is_not_found: bool = False) -> StoreError:
        what = f"{key!r} in {self.describe()}" if key else self.describe()
        reason = err.strerror or str(err)
        if missing_is_not_found and err.errno in _MISSING + (errno.EISDIR, errno.ELOOP):
            return ObjectNotFound(f"object {what} does not exist")
        hint = _hint_for(err, self._root)
        if hint is None and err.errno == errno.EISDIR:
            hint = "the key is also a prefix of other keys; a file store cannot hold both"
        return StoreError(f"cannot {op} {what}: {reason}", hint=hint)

    def _makedirs(self, path: str, key: str) -> None:
        """Create `path` (under the root) and missing parents, 0700, durably.

        A concurrent delete may remove a directory left empty while we walk
        down: start again from the root when that happens.
        """
        if os.path.isdir(path):
            return
        parts = os.path.relpath(path, self._root).split(os.sep)
        for _ in range(_PUT_ATTEMPTS):
            try:
                self._makedirs_once(parts)
                return
            except FileNotFoundError:
                continue
            except OSError as e:
                raise self._error(e, "create a directory for", key) from e
        raise StoreError(f"cannot create a directory for {key!r} in {self.describe()}: it keeps disappearing")

    def _makedirs_once(self, parts: List[str]) -> None:
        current = self._root
        for part in parts:
            parent, current = current, os.path.join(current, part)
            try:
                os.mkdir(current, 0o700)
            except FileExistsError:
                continue
            os.chmod(current, 0o700)  # the umask may have taken bits away
            _fsync_dir(parent)

    # -- writes -------------------------------------------------------------

    def _put(self, key: str, write: Callable[[int], None]) -> None:
        path = self._path(key)
        parent = os.path.dirname(path)
        fd = -1
        tmp = ""
        for _ in range(_PUT_ATTEMPTS):
            self._makedirs(parent, key)
            tmp = os.path.join(parent, _TMP_PREFIX + secrets.token_hex(8))
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                break
            except FileNotFoundError:
                continue  # a concurrent delete removed the (empty) directory: make it again
            except OSError as e:
                raise self._error(e, "write", key) from e
        if fd < 0:
            raise StoreError(f"cannot write {key!r} in {self.describe()}: its directory keeps disappearing")
        try:
            try:
                os.fchmod(fd, 0o600)
                write(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except BaseException as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(e, OSError):
                raise self._error(e, "write", key) from e
            raise
        try:
            _fsync_dir(parent)
        except OSError as e:
            raise self._error(e, "write", key) from e

    def put_bytes(self, key: str, data: bytes) -> None:
        self._put(key, lambda fd: _write_all(fd, data))

    def put_file(self, key: str, src_path: str) -> None:
        self._path(key)  # validate before touching the source
        try:
            src = os.open(src_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise StoreError(f"cannot read {src_path} to store it as {key!r}: {e.strerror}") from e
        try:
            self._put(key, lambda fd: _copy_fd(src, fd))
        finally:
            os.close(src)

    # -- reads --------------------------------------------------------------

    def _open_read(self, key: str) -> int:
        # Some shared file systems (JuiceFS seen here, about 4% of reads under a
        # concurrent replace) answer ENOENT for a file that a rename is
        # replacing at that moment: retry briefly (63 ms in all) before calling
        # it missing.
        path = self._path(key)
        for delay in (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, None):
            try:
                return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except FileNotFoundError as e:
                if delay is None:
                    raise self._error(e, "read", key, missing_is_not_found=True) from e
                time.sleep(delay)
            except OSError as e:
                raise self._error(e, "read", key, missing_is_not_found=True) from e
        raise AssertionError("unreachable")

    def get_bytes(self, key: str) -> bytes:
        fd = self._open_read(key)
        try:
            chunks = []
            while True:
                block = os.read(fd, _COPY_BLOCK)
                if not block:
                    break
                chunks.append(block)
            return b"".join(chunks)
        except OSError as e:
            raise self._error(e, "read", key, missing_is_not_found=True) from e
        finally:
            os.close(fd)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range offset={offset} length={length}")
        fd = self._open_read(key)
        try:
            parts = []
            while length > 0:
                block = os.pread(fd, min(length, _COPY_BLOCK), offset)
                if not block:
                    break
                parts.append(block)
                offset += len(block)
                length -= len(block)
            return b"".join(parts)
        except OSError as e:
            raise self._error(e, "read", key, missing_is_not_found=True) from e
        finally:
            os.close(fd)

    def get_file(self, key: str, dest_path: str) -> None:
        src = self._open_read(key)
        try:
            dest_path = os.path.abspath(dest_path)
            tmp = os.path.join(os.path.dirname(dest_path), _TMP_PREFIX + secrets.token_hex(8))
            try:
                dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            except OSError as e:
                raise StoreError(
                    f"cannot write {dest_path} (from {key!r}): {e.strerror}", hint=_hint_for(e, dest_path),
                ) from e
            try:
                try:
                    os.fchmod(dst, 0o600)
                    _copy_fd(src, dst)
                finally:
                    os.close(dst)
                os.rename(tmp, dest_path)
            except BaseException as e:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                if isinstance(e, OSError):
                    raise StoreError(
                        f"cannot copy {key!r} from {self.describe()} to {dest_path}: {e.strerror}",
                        hint=_hint_for(e, self._root),
                    ) from e
                raise
        finally:
            os.close(src)

    def exists(self, key: str) -> bool:
        try:
            st = os.lstat(self._path(key))
        except OSError as e:
            if e.errno in _MISSING:
                return False
            raise self._error(e, "look up", key) from e
        return stat_mod.S_ISREG(st.st_mode)

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = os.lstat(self._path(key))
        except OSError as e:
            raise self._error(e, "stat", key, missing_is_not_found=True) from e
        if not stat_mod.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"object {key!r} in {self.describe()} does not exist")
        return ObjectInfo(size=st.st_size, mtime=st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[str]:
        prefix = validate_prefix(prefix)
        top = self._path(prefix) if prefix else self._root
        return self._walk(top, prefix)

    def _walk(self, dirpath: str, rel: str) -> Iterator[str]:
        try:
            with os.scandir(dirpath) as it:
                entries = list(it)
        except OSError as e:
            if e.errno in _MISSING:
                return  # no such prefix (or it was removed meanwhile)
            raise self._error(e, "list", rel or "/") from e
        for entry in entries:
            if entry.name.startswith(RESERVED_PREFIX):
                continue
            key = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    yield from self._walk(entry.path, key)
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                validate_key(key)
            except (OSError, StoreError):
                continue  # vanished meanwhile, or not something a key can name
            yield key

    # -- deletes ------------------------------------------------------------

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except OSError as e:
            if e.errno in _MISSING + (errno.EISDIR,):
                return
            raise self._error(e, "delete", key) from e
        self._remove_empty_parents(os.path.dirname(path))

    def _remove_empty_parents(self, path: str) -> None:
        while path != self._root and path.startswith(self._root + os.sep):
            try:
                os.rmdir(path)
            except OSError:
                return  # not empty (or already gone): stop
            path = os.path.dirname(path)
