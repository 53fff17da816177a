"""Fixtures for the S3 store against a real S3-compatible server (SeaweedFS).

`s3_server` and `bucket` come from tests/integration/conftest.py.
`private_s3` is a server of the test module alone, on its own ports and
directory, that a test may kill and restart.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.conftest import unavailable
from tests.lib import s3server


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
