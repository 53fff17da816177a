"""Fixtures of the management server's browser tests: the daemon tests'
private nodes (own dockerd, mmbatchd, fake IMDS, store dir) and Chromium."""

from __future__ import annotations

import pytest

from tests.conftest import unavailable
from tests.integration.daemon.conftest import (  # noqa: F401  (fixtures)
    daemon_prereqs,
    imds_factory,
    node_factory,
    store_dir,
)
from tests.lib.browser import Browser, find_chromium


@pytest.fixture
def browser():
    binary = find_chromium()
    if binary is None:
        unavailable("chromium is not installed (apt-get install -y --no-install-recommends chromium)")
    b = Browser(binary)
    yield b
    b.close()
