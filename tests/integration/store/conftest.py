"""Fixtures for the S3 store against a real S3-compatible server (SeaweedFS).

`s3_server` is the session's shared server (tests/lib/s3server.py; it may be
one that MMBATCH_TEST_S3_ENDPOINT names); `bucket` a fresh bucket on it.
`private_s3` is a server of the test module alone, on its own ports and
directory, that a test may kill and restart.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.conftest import unavailable
from tests.lib import s3server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[s3server.S3Server]:
    try:
        server = s3server.acquire_shared()
    except (OSError, RuntimeError) as e:
        unavailable(f"no S3-compatible server: {e}")
    try:
        yield server
    finally:
        s3server.release_shared()


@pytest.fixture(scope="module")
def private_s3(tmp_path_factory) -> Iterator[s3server.S3Server]:
    """A weed of this module's own, which its tests may kill and restart."""
    try:
        server = s3server.new_server(str(tmp_path_factory.mktemp("weed")))
    except (OSError, RuntimeError) as e:
        unavailable(f"cannot start a private SeaweedFS server: {e}")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def bucket(s3_server) -> Iterator[str]:
    """A fresh bucket, emptied and removed afterwards."""
    name = s3_server.create_bucket()
    yield name
    s3_server.delete_bucket(name)
