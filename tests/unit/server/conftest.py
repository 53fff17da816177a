"""Fixtures of the management server's unit tests: a store with job records,
a server on 127.0.0.1, a fake Cognito with a test RSA key (made once)."""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List

import pytest

from mmbatch import config as config_mod
from mmbatch.checkpoints import CheckpointRepository
from mmbatch.store.fs import FsObjectStore
from tests.lib.fake_cognito import FakeCognito, RsaTestKey


@pytest.fixture(scope="session")
def rsa_key() -> RsaTestKey:
    return RsaTestKey(kid="test-key-1")


@pytest.fixture(scope="session")
def other_key() -> RsaTestKey:
    return RsaTestKey(kid="test-key-1")  # same kid, another key: a forged signature


@pytest.fixture
def store(tmp_path) -> FsObjectStore:
    return FsObjectStore(str(tmp_path / "store"))


def repo(store: FsObjectStore, job_key: str) -> CheckpointRepository:
    return CheckpointRepository(store, job_key)


@pytest.fixture
def make_server(tmp_path) -> Callable[..., Any]:
    """make_server(server_settings, store_url) -> a started DashboardServer (stopped at teardown)."""
    from mmbatch.server.cli import build

    started: List[Any] = []

    def make(settings: Dict[str, Any], store_url: str, listen: str = "127.0.0.1:0") -> Any:
        settings = dict(settings)
        settings.setdefault("cache_path", str(tmp_path / f"cache-{len(started)}.sqlite3"))
        cfg = config_mod.from_dict({"server": settings, "store": {"url": store_url}})
        server = build(cfg, listen=listen)
        server.start()
        started.append(server)
        return server

    yield make
    for s in started:
        s.stop()
        s.app.cache.close()


@pytest.fixture
def admin_token_file(tmp_path) -> str:
    path = str(tmp_path / "admin-token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"0123456789abcdef-admin-token\n")
    os.close(fd)
    return path


@pytest.fixture
def fake_cognito(rsa_key):
    fake = FakeCognito(key=rsa_key).start()
    yield fake
    fake.stop()
