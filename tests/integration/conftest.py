"""Fixtures of the integration tests: the session's S3-compatible server and fresh buckets on it.

`s3_server` is the session's shared server (tests/lib/s3server.py; it may be
one that MMBATCH_TEST_S3_ENDPOINT names); `bucket` a fresh bucket on it.
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


@pytest.fixture
def bucket(s3_server) -> Iterator[str]:
    """A fresh bucket, emptied and removed afterwards."""
    name = s3_server.create_bucket()
    yield name
    s3_server.delete_bucket(name)
