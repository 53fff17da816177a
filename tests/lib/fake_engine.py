"""The container engine as mmbatchd sees it, for unit tests (no dockerd)."""

from __future__ import annotations

from typing import Any, Dict, List


class FakeEngine:
    """The engine's container list and event stream: `running` is what it lists."""

    def __init__(self) -> None:
        self.running: List[str] = []

    def list_containers(self, label=None) -> List[Dict[str, Any]]:
        return [{"Id": c, "State": "running"} for c in self.running]

    def events(self, *a, **kw):
        return iter(())
