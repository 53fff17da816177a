"""What is particular to the file-system store: modes, temp files, hints, URLs."""

from __future__ import annotations

import errno
import os
import stat
import tempfile

import pytest

from mmbatch.errors import ObjectNotFound, StoreError
from mmbatch.store import FsObjectStore, open_store
from mmbatch.store import fs as fs_mod


@pytest.fixture
def open_umask():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root):
    dirs, files = {}, {}
    for dirpath, _dirnames, filenames in os.walk(root):
        dirs[dirpath] = stat.S_IMODE(os.stat(dirpath).st_mode)
        for name in filenames:
            p = os.path.join(dirpath, name)
            files[p] = stat.S_IMODE(os.stat(p).st_mode)
    return dirs, files


def test_dirs_0700_files_0600_whatever_the_umask(tmp_path, open_umask):
    store = FsObjectStore(str(tmp_path / "new" / "root"))
    src = tmp_path / "src"
    src.write_bytes(b"secret")
    os.chmod(src, 0o755)
    store.put_bytes("jobs/j/manifests/m.json", b"{}")
    store.put_file("jobs/j/chunks/ab/abc", str(src))
    dirs, files = _modes(store.root)
    assert set(dirs.values()) == {0o700}
    assert set(files.values()) == {0o600}
    assert len(files) == 2


def test_get_file_writes_0600(tmp_path, open_umask):
    store = FsObjectStore(str(tmp_path / "s"))
    store.put_bytes("k", b"v")
    store.get_file("k", str(tmp_path / "out"))
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o600


def test_existing_root_is_left_as_it_is(tmp_path):
    root = tmp_path / "mnt"
    root.mkdir()
    os.chmod(root, 0o755)  # a mount point owned by someone else
    FsObjectStore(str(root)).put_bytes("a/b", b"x")
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(root / "a").st_mode) == 0o700


def test_temp_files_are_invisible_and_cleaned_on_failure(tmp_path, monkeypatch):
    store = FsObjectStore(str(tmp_path / "s"))
    store.put_bytes("d/keep", b"1")
    # A temp file left by a crash is never listed.
    (tmp_path / "s" / "d" / ".mmbatch-tmp-deadbeef").write_bytes(b"half")
    assert list(store.list("")) == ["d/keep"]

    def fail_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fs_mod.os, "fsync", fail_fsync)
    with pytest.raises(StoreError) as exc:
        store.put_bytes("d/new", b"data")
    assert "unreachable" in str(exc.value)
    assert "d/new" in str(exc.value)
    names = sorted(os.listdir(tmp_path / "s" / "d"))
    assert names == [".mmbatch-tmp-deadbeef", "keep"]


@pytest.mark.parametrize(
    "err, words",
    [
        (errno.ENOSPC, "file system is full"),
        (errno.EDQUOT, "file system is full"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "permission denied"),
        (errno.EROFS, "read-only"),
        (errno.ENOTCONN, "unreachable"),
        (errno.ESTALE, "unreachable"),
    ],
)
def test_errors_carry_key_and_hint(tmp_path, monkeypatch, err, words):
    store = FsObjectStore(str(tmp_path / "s"))
    real_open = os.open

    def failing_open(path, flags, mode=0o777, **kw):
        if ".mmbatch-tmp-" in str(path):
            raise OSError(err, os.strerror(err))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(fs_mod.os, "open", failing_open)
    with pytest.raises(StoreError) as exc:
        store.put_bytes("jobs/j/LATEST", b"x")
    assert not isinstance(exc.value, ObjectNotFound)
    assert "jobs/j/LATEST" in str(exc.value)
    assert words in exc.value.hint


def test_read_errors_other_than_missing_are_not_not_found(tmp_path, monkeypatch):
    store = FsObjectStore(str(tmp_path / "s"))
    store.put_bytes("k", b"v")

    def failing_open(path, flags, mode=0o777, **kw):
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    monkeypatch.setattr(fs_mod.os, "open", failing_open)
    with pytest.raises(StoreError) as exc:
        store.get_bytes("k")
    assert not isinstance(exc.value, ObjectNotFound)
    assert "mounted" in exc.value.hint


def test_root_on_another_file_system(tmp_path):
    """Temp files live next to the object, so puts never rename across file systems."""
    shm = "/dev/shm"
    if not os.path.isdir(shm) or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a file system other than the temp dir")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        store = FsObjectStore(os.path.join(other, "store"))
        src = tmp_path / "src"
        src.write_bytes(b"abc" * 1000)
        store.put_file("k/1", str(src))
        store.get_file("k/1", str(tmp_path / "back"))
        assert (tmp_path / "back").read_bytes() == b"abc" * 1000


def test_root_problems(tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"")
    with pytest.raises(StoreError, match="not a directory"):
        FsObjectStore(str(f))
    with pytest.raises(StoreError, match="does not exist"):
        FsObjectStore(str(tmp_path / "absent"), create=False)
    with pytest.raises(StoreError):
        FsObjectStore("bad\0path")


def test_key_that_is_also_a_prefix(tmp_path):
    store = FsObjectStore(str(tmp_path / "s"))
    store.put_bytes("a/b", b"1")
    with pytest.raises(StoreError) as exc:
        store.put_bytes("a", b"2")
    assert "prefix" in exc.value.hint
    assert not store.exists("a")
    assert store.get_bytes("a/b") == b"1"
    with pytest.raises(ObjectNotFound):
        store.get_bytes("a")


def test_symlinks_in_the_store_are_not_objects(tmp_path):
    store = FsObjectStore(str(tmp_path / "s"))
    secret = tmp_path / "secret"
    secret.write_bytes(b"host secret")
    os.symlink(secret, tmp_path / "s" / "link")
    assert not store.exists("link")
    assert list(store.list("")) == []
    with pytest.raises(ObjectNotFound):
        store.get_bytes("link")


def test_delete_removes_empty_directories(tmp_path):
    store = FsObjectStore(str(tmp_path / "s"))
    store.put_bytes("jobs/j/chunks/ab/abc", b"x")
    store.put_bytes("jobs/j/LATEST", b"x")
    store.delete("jobs/j/chunks/ab/abc")
    assert os.listdir(tmp_path / "s" / "jobs" / "j") == ["LATEST"]
    store.delete("jobs/j/LATEST")
    assert os.listdir(tmp_path / "s") == []


# -- open_store ------------------------------------------------------------


def test_open_store_file_urls(tmp_path):
    for url in (f"file://{tmp_path}/a", str(tmp_path / "b"), f"file://localhost{tmp_path}/c"):
        store = open_store(url)
        assert isinstance(store, FsObjectStore)
    assert open_store(f"file://{tmp_path}/with%20space").root == f"{tmp_path}/with space"
    assert open_store(f"file://{tmp_path}/d").url == f"file://{tmp_path}/d"


@pytest.mark.parametrize(
    "url", ["", "relative/path", "file://host/path", "file:relative", "http://x/y", "gs://b/p", "s4://x", "file:///a\0b"]
)
def test_open_store_rejects(url):
    with pytest.raises(StoreError):
        open_store(url)


def test_open_store_s3_without_backend(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mmbatch.store.s3", None)  # makes the import fail
    with pytest.raises(StoreError, match="s3 store not available in this build"):
        open_store("s3://bucket/prefix")
