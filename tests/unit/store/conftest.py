"""Fixtures for the store suite: every test taking `store` runs on every backend.

A backend is one entry in STORE_BACKENDS: a factory `(tmp_path) -> ObjectStore`
(skipping when the backend cannot run here) and, optionally, a way to make
an object look older than it is (for the garbage-collection grace period);
tests that need that skip on backends that cannot do it.

- fs: a FsObjectStore in the test's tmp dir;
- s3: a S3ObjectStore on a real S3-compatible server (SeaweedFS, one per
  test session, see tests/lib/s3server.py; MMBATCH_TEST_S3_ENDPOINT names
  one that is already running), a fresh prefix per test in one bucket, SSE
  on (AES256) as in production. S3 cannot backdate an object;
- juicefs: a FsObjectStore in a fresh directory of a JuiceFS file system
  formatted over a bucket of that server and FUSE-mounted once per session.

Without weed, juicefs or /dev/fuse the s3 and juicefs tests skip, or fail
under MMBATCH_TEST_STRICT=1 (tests/conftest.py's unavailable()).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional

import pytest

from mmbatch.checkpoints import CheckpointRepository
from mmbatch.config import StoreSection
from mmbatch.errors import StoreError
from mmbatch.store.base import ObjectInfo, ObjectStore
from mmbatch.store.fs import FsObjectStore
from tests.conftest import unavailable
from tests.lib import juicefs as jfs
from tests.lib import s3server


class Backend(NamedTuple):
    make: Callable[[object], ObjectStore]
    backdate: Optional[Callable[[ObjectStore, str, float], None]]


def _fs_make(tmp_path) -> ObjectStore:
    return FsObjectStore(str(tmp_path / "store"))


def _fs_backdate(store: ObjectStore, key: str, seconds: float) -> None:
    assert isinstance(store, FsObjectStore)
    path = os.path.join(store.root, *key.split("/"))
    t = time.time() - seconds
    os.utime(path, (t, t))


class _Session:
    """What the s3 and juicefs backends share for the whole test session (started on first use)."""

    server: Optional[s3server.S3Server] = None
    bucket = ""
    juicefs: Optional[jfs.JuiceFS] = None
    juicefs_error = ""


def _s3_server() -> s3server.S3Server:
    if _Session.server is None:
        try:
            _Session.server = s3server.acquire_shared()
        except (OSError, RuntimeError) as e:
            unavailable(f"no S3-compatible server: {e}")
        assert _Session.server is not None
        _Session.bucket = _Session.server.create_bucket()
    return _Session.server


def s3_store_section(server: s3server.S3Server, **kw) -> StoreSection:
    """The [store] settings for `server`: SSE as in production when the server has an SSE key."""
    sse = "AES256" if server.sse_kek else os.environ.get("MMBATCH_TEST_S3_SSE", "none")
    return StoreSection(endpoint_url=server.endpoint, region=server.region, sse=sse, **kw)


def _s3_make(tmp_path) -> ObjectStore:
    from mmbatch.store.s3 import S3ObjectStore

    server = _s3_server()
    url = f"s3://{_Session.bucket}/t-{secrets.token_hex(6)}"  # list("") sees this test's objects only
    return S3ObjectStore(url, s3_store_section(server), session=server.session())


def _juicefs_make(tmp_path) -> ObjectStore:
    if _Session.juicefs is None:
        why = _Session.juicefs_error or jfs.unavailable_reason()
        if not why:
            server = _s3_server()
            try:
                _Session.juicefs = jfs.mount_over(server)
            except (OSError, RuntimeError) as e:
                why = _Session.juicefs_error = f"cannot mount JuiceFS: {e}"
        if why:
            unavailable(why)
    assert _Session.juicefs is not None
    return FsObjectStore(os.path.join(_Session.juicefs.mountpoint, f"t-{secrets.token_hex(6)}"))


STORE_BACKENDS: Dict[str, Backend] = {
    "fs": Backend(_fs_make, _fs_backdate),
    "s3": Backend(_s3_make, None),
    "juicefs": Backend(_juicefs_make, _fs_backdate),
}


@pytest.fixture(scope="session", autouse=True)
def _store_backend_servers():
    """Unmount JuiceFS and let go of the S3 server once the session is over."""
    yield
    if _Session.juicefs is not None:
        _Session.juicefs.cleanup()
        _Session.juicefs = None
    if _Session.server is not None:
        _Session.server = None
        s3server.release_shared()


@pytest.fixture(params=sorted(STORE_BACKENDS))
def backend_name(request) -> str:
    return request.param


@pytest.fixture
def store(backend_name, tmp_path) -> ObjectStore:
    return STORE_BACKENDS[backend_name].make(tmp_path)


@pytest.fixture
def backdate(backend_name) -> Callable[[ObjectStore, str, float], None]:
    """backdate(store, key, seconds): make an object look `seconds` older."""
    fn = STORE_BACKENDS[backend_name].backdate
    if fn is None:
        pytest.skip(f"the {backend_name} backend cannot backdate objects")
    return fn


@pytest.fixture
def small_repo(store) -> CheckpointRepository:
    """A repository with small chunks (64 KiB) and packs (256 KiB), so tests stay fast."""
    return CheckpointRepository(store, "job-1", chunk_size=64 * 1024, pack_size=256 * 1024, parallel=4)


class WrappedStore(ObjectStore):
    """Delegates to another store; tests override methods to inject faults or count."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner

    @property
    def url(self) -> str:
        return self.inner.url

    def put_bytes(self, key: str, data: bytes) -> None:
        self.inner.put_bytes(key, data)

    def put_file(self, key: str, src_path: str) -> None:
        self.inner.put_file(key, src_path)

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self.inner.get_range(key, offset, length)

    def get_file(self, key: str, dest_path: str) -> None:
        self.inner.get_file(key, dest_path)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def delete_many(self, keys: Iterable[str]) -> None:
        self.inner.delete_many(keys)


class FailingStore(WrappedStore):
    """Fails the n-th put (1-based) whose key contains `match`, and every later one."""

    def __init__(self, inner: ObjectStore, fail_at: int, match: str = "") -> None:
        super().__init__(inner)
        self.fail_at = fail_at
        self.match = match
        self.puts = 0
        self.lock = threading.Lock()

    def put_bytes(self, key: str, data: bytes) -> None:
        if self.match in key:
            with self.lock:
                self.puts += 1
                n = self.puts
            if n >= self.fail_at:
                raise StoreError(f"injected failure writing {key!r}")
        self.inner.put_bytes(key, data)


class CountingStore(WrappedStore):
    """Records puts, ranged reads and the peak of bytes held by puts in flight."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.lock = threading.Lock()
        self.put_keys: List[str] = []
        self.range_reads = 0
        self.in_flight = 0
        self.peak_in_flight = 0

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.lock:
            self.put_keys.append(key)
            self.in_flight += len(data)
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            time.sleep(0.002)  # let puts overlap
            self.inner.put_bytes(key, data)
        finally:
            with self.lock:
                self.in_flight -= len(data)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        with self.lock:
            self.range_reads += 1
        return self.inner.get_range(key, offset, length)


@pytest.fixture
def wrappers():
    """The store doubles, for tests that wrap the `store` fixture."""
    return {"failing": FailingStore, "counting": CountingStore, "wrapped": WrappedStore}
