"""`criu_report()`: what `mmbatch doctor` shows about CRIU on this node.

Never raises: a missing or broken CRIU is a finding to report, not a crash.
"""

from __future__ import annotations

from typing import Any, Dict

from .client import FEATURES, CriuClient
from .errors import CriuBindingsError, CriuError

__all__ = ["criu_report"]


def criu_report(criu: str | None = None, *, timeout: float = 60.0) -> Dict[str, Any]:
    """CRIU's version, feature support and `criu check` result, as a JSON-ready dict.

    Shape::

        {"criu": "/usr/local/sbin/criu" or None,
         "version": {"major": 4, "minor": 1, "sublevel": 1, "gitid": None, "text": "4.1.1"} or None,
         "features": {"mem_dirty_track": False, "lazy_pages": True, "pidfd_store": True} or {},
         "check": {"ok": True, "error": None},
         "errors": [...]}   # one line per step that could not run

    `criu` is the binary (default: $MMBATCH_CRIU, else `criu` on PATH).
    """
    report: Dict[str, Any] = {
        "criu": None,
        "version": None,
        "features": {},
        "check": {"ok": False, "error": None},
        "errors": [],
    }
    client = CriuClient(criu, query_timeout=timeout)
    try:
        report["criu"] = client.criu
    except CriuBindingsError as e:
        report["errors"].append(str(e))
        report["check"]["error"] = str(e)
        return report
    try:
        v = client.version()
        report["version"] = {
            "major": v.major,
            "minor": v.minor,
            "sublevel": v.sublevel,
            "gitid": v.gitid,
            "text": str(v),
        }
    except CriuBindingsError as e:
        report["errors"].append(f"version: {e}")
    try:
        report["features"] = client.feature_check(FEATURES)
    except CriuBindingsError as e:
        report["errors"].append(f"feature check: {e}")
    try:
        client.check()
        report["check"] = {"ok": True, "error": None}
    except CriuError as e:
        report["check"] = {"ok": False, "error": str(e)}
    except CriuBindingsError as e:
        report["check"] = {"ok": False, "error": str(e)}
        report["errors"].append(f"check: {e}")
    return report
