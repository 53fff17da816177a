"""Fixtures of the shim's unit tests (pure: no root, no docker)."""

from __future__ import annotations

import pytest

from tests.unit.shim.shim_harness import ShimHarness


@pytest.fixture
def shim(tmp_path) -> ShimHarness:
    """A fake delegate runtime, a config pointing at it, and a tmp state dir."""
    return ShimHarness(str(tmp_path))
