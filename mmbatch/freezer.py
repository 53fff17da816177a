"""Freezing a container's cgroup directly (cgroup v1 freezer or v2 cgroup.freeze).

`runc pause` does exactly this plus a process start; on the checkpoint path
every millisecond here is a millisecond the job is frozen, so the checkpointer
writes the cgroup files itself. runc derives a container's status from the
same files, so `runc state` reports "paused" and `runc resume` thaws it.
"""

from __future__ import annotations

import os
import time
from typing import Dict, List

from mmbatch.errors import CheckpointError


class Freezer:
    def __init__(self, cgroup_paths: Dict[str, str]) -> None:
        self.v1 = cgroup_paths.get("freezer", "")
        self.v2 = cgroup_paths.get("", "") if not self.v1 else ""
        if not self.v1 and not self.v2:
            raise CheckpointError("the container has no freezer cgroup")

    def _write(self, name: str, value: str) -> None:
        base = self.v1 or self.v2
        with open(os.path.join(base, name), "w") as f:
            f.write(value)

    def frozen(self) -> bool:
        if self.v1:
            with open(os.path.join(self.v1, "freezer.state")) as f:
                return f.read().strip() == "FROZEN"
        with open(os.path.join(self.v2, "cgroup.events")) as f:
            return any(line.strip() == "frozen 1" for line in f)

    def freeze(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            self._write("freezer.state" if self.v1 else "cgroup.freeze", "FROZEN" if self.v1 else "1")
            if self.frozen():
                return
            if time.monotonic() > deadline:
                self.thaw()
                raise CheckpointError(f"the container did not freeze within {timeout:g}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def thaw(self) -> None:
        self._write("freezer.state" if self.v1 else "cgroup.freeze", "THAWED" if self.v1 else "0")

    def pids(self) -> List[int]:
        base = self.v1 or self.v2
        with open(os.path.join(base, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
