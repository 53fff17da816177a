"""Named fault points for tests: MMBATCH_FAULT=<point>:<action>.

Actions: `sleep` (stop there for MMBATCH_FAULT_SECONDS, default 60, so a
test can kill the process at that exact step) and `fail` (raise). Unset in
production, where a point costs one dict lookup.
"""

from __future__ import annotations

import os
import time

from mmbatch.errors import CheckpointError


def point(name: str) -> None:
    spec = os.environ.get("MMBATCH_FAULT")
    if not spec:
        return
    where, _, action = spec.partition(":")
    if where != name:
        return
    marker = os.environ.get("MMBATCH_FAULT_MARKER")
    if marker:
        with open(marker, "w") as f:
            f.write(name)
    if action == "fail":
        raise CheckpointError(f"injected failure at {name}")
    time.sleep(float(os.environ.get("MMBATCH_FAULT_SECONDS", "60")))
