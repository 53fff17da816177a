"""The ObjectStore contract, run against every backend (see conftest.STORE_BACKENDS)."""

from __future__ import annotations

import os
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmbatch.errors import ObjectNotFound, StoreError
from mmbatch.store.base import MAX_KEY_BYTES, validate_key, validate_prefix

HOSTILE_KEYS = [
    "",
    "/abs",
    "/etc/passwd",
    "../x",
    "a/../../x",
    "..",
    ".",
    "./a",
    "a/.",
    "a//b",
    "a/",
    "a\0b",
    "a\nb",
    "a\x7fb",
    "x" * (MAX_KEY_BYTES + 1),
    "a/" + "y" * 256,
    "é" * 600,  # 1200 bytes of UTF-8
    "a/\udcff",  # not encodable as UTF-8
    "a/.mmbatch-tmp-1234",
]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=range(len(HOSTILE_KEYS)))
def test_validate_key_rejects_hostile_keys(key):
    with pytest.raises(StoreError):
        validate_key(key)


@pytest.mark.parametrize("key", [None, 3, b"bytes"])
def test_validate_key_rejects_non_strings(key):
    with pytest.raises(StoreError):
        validate_key(key)


@pytest.mark.parametrize("key", ["a", "a/b/c", "jobs/j-1/manifests/x.json", "ünï/cødé", "a b", "...", "a..b", ".x"])
def test_validate_key_accepts_normal_keys(key):
    assert validate_key(key) == key


def test_validate_prefix():
    assert validate_prefix("") == ""
    assert validate_prefix("a/b/") == "a/b"
    with pytest.raises(StoreError):
        validate_prefix("/")
    with pytest.raises(StoreError):
        validate_prefix("../a")


def _snapshot(path):
    out = set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            out.add(os.path.join(dirpath, name))
    return out


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=range(len(HOSTILE_KEYS)))
def test_hostile_keys_are_refused_by_every_operation(store, tmp_path, key):
    before = _snapshot(tmp_path)
    src = tmp_path / "src"
    src.write_bytes(b"x")
    ops = [
        lambda: store.put_bytes(key, b"x"),
        lambda: store.put_file(key, str(src)),
        lambda: store.get_bytes(key),
        lambda: store.get_range(key, 0, 1),
        lambda: store.get_file(key, str(tmp_path / "dest")),
        lambda: store.exists(key),
        lambda: store.stat(key),
        lambda: store.delete(key),
        lambda: store.delete_many([key]),
    ]
    for op in ops:
        with pytest.raises(StoreError):
            op()
    assert _snapshot(tmp_path) - before == {str(src)}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(min_size=1, max_size=80))
def test_no_key_escapes_the_root(store, tmp_path, key):
    """Whatever the key, a put either is refused or lands in the store and reads back."""
    def outside():  # everything local that is not the file store's own tree
        return _snapshot(tmp_path) - _snapshot(tmp_path / "store")

    before = outside()
    try:
        store.put_bytes(key, b"data")
    except StoreError:
        assert outside() == before
        return
    assert outside() == before
    assert store.get_bytes(key) == b"data"
    assert key in set(store.list(""))
    store.delete(key)
    assert not store.exists(key)


def test_put_get_roundtrip(store):
    store.put_bytes("a/b/c", b"hello")
    assert store.get_bytes("a/b/c") == b"hello"
    assert store.exists("a/b/c")
    assert not store.exists("a/b")
    assert not store.exists("a/b/c/d")
    info = store.stat("a/b/c")
    assert info.size == 5
    assert abs(info.mtime - time.time()) < 600


def test_empty_and_unicode_objects(store):
    store.put_bytes("ünïcødé/ключ", b"")
    assert store.get_bytes("ünïcødé/ключ") == b""
    assert store.stat("ünïcødé/ключ").size == 0
    assert list(store.list("ünïcødé")) == ["ünïcødé/ключ"]


def test_put_replaces_atomically(store):
    store.put_bytes("k", b"old" * 1000)
    stop = threading.Event()
    seen = set()

    def reader():
        while not stop.is_set():
            seen.add(store.get_bytes("k"))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(50):
            store.put_bytes("k", b"new" * 1000)
            store.put_bytes("k", b"old" * 1000)
    finally:
        stop.set()
        t.join()
    assert seen <= {b"old" * 1000, b"new" * 1000}


def test_put_file_and_get_file(store, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 7)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    store.put_file("files/big", str(src))
    assert store.get_bytes("files/big") == data
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"previous content")
    store.get_file("files/big", str(dest))
    assert dest.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mmbatch")] == []


def test_put_file_missing_source(store, tmp_path):
    with pytest.raises(StoreError):
        store.put_file("k", str(tmp_path / "nope"))
    assert not store.exists("k")


def test_get_range(store):
    data = bytes(range(256)) * 10
    store.put_bytes("r", data)
    assert store.get_range("r", 0, 10) == data[:10]
    assert store.get_range("r", 100, 300) == data[100:400]
    assert store.get_range("r", len(data) - 5, 100) == data[-5:]  # clipped at the end
    assert store.get_range("r", 5, 0) == b""
    with pytest.raises(ValueError):
        store.get_range("r", -1, 5)


def test_missing_objects(store, tmp_path):
    for op in (
        lambda: store.get_bytes("nope"),
        lambda: store.get_range("nope", 0, 1),
        lambda: store.get_file("nope", str(tmp_path / "d")),
        lambda: store.stat("nope"),
    ):
        with pytest.raises(ObjectNotFound):
            op()
    assert not store.exists("nope")
    assert not (tmp_path / "d").exists()
    store.delete("nope")  # not an error
    store.delete_many(["nope", "nope/too"])


def test_list_is_recursive_and_scoped(store):
    keys = {"jobs/a/x", "jobs/a/sub/y", "jobs/ab/z", "jobs/b", "other"}
    for k in keys:
        store.put_bytes(k, b"1")
    assert set(store.list("")) == keys
    assert set(store.list("jobs/a")) == {"jobs/a/x", "jobs/a/sub/y"}
    assert set(store.list("jobs/a/")) == {"jobs/a/x", "jobs/a/sub/y"}
    assert set(store.list("jobs")) == {"jobs/a/x", "jobs/a/sub/y", "jobs/ab/z", "jobs/b"}
    assert set(store.list("missing")) == set()
    assert set(store.list("jobs/b")) == set()  # an object is not a prefix of itself
    infos = dict(store.list_info("jobs/a"))
    assert set(infos) == {"jobs/a/x", "jobs/a/sub/y"}
    assert all(i.size == 1 for i in infos.values())


def test_delete_and_delete_many(store):
    for k in ("d/1", "d/2", "d/e/3", "keep"):
        store.put_bytes(k, b"x")
    store.delete("d/1")
    assert not store.exists("d/1")
    store.delete_many(["d/2", "d/e/3"])
    assert set(store.list("")) == {"keep"}
    store.put_bytes("d/e/3", b"again")  # a deleted prefix can be written again
    assert store.get_bytes("d/e/3") == b"again"


def test_concurrent_puts_and_deletes_in_one_directory(store):
    errors = []

    def worker(n):
        try:
            for i in range(40):
                key = f"dir/sub/{n}-{i}"
                store.put_bytes(key, b"v")
                assert store.get_bytes(key) == b"v"
                store.delete(key)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert list(store.list("")) == []


def test_url_and_describe(store):
    assert "://" in store.url
    assert store.describe()
    assert store.url in repr(store)
