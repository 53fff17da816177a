"""Attempt records of a job, and the restore policy that reads them.

Each container of a managed job writes `attempts/<container id>` in the
store: when it started, what it was restored from, and how it ended. The
policy restores only what was interrupted: the job's previous attempt was
stopped from outside (the engine or agent sent a signal, a Spot
interruption) or has no recorded end (the host vanished); never when it ended
on its own (a failure or an OOM kill: restoring would replay it).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

ENDED_KILLED = "killed"      # stopped from outside: restore
ENDED_OOM = "oom"            # the kernel killed it for memory: do not restore
ENDED_EXITED = "exited"      # ended on its own (exit code filled in later)
ENDED_SUCCEEDED = "succeeded"


def previous_attempt(records: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The most recently started attempt. Read before the new attempt writes
    its own record, so a container started again under the same id (a
    restart policy) sees its own previous run."""
    if not records:
        return None
    return max(records, key=lambda r: float(r.get("started_at") or 0))


def should_restore(records: List[Dict[str, Any]]) -> Tuple[bool, str]:
    """(restore?, why) from the job's attempt records."""
    prev = previous_attempt(records)
    if prev is None:
        return True, "no earlier attempt recorded"
    end = prev.get("end")
    short = str(prev.get("container_id", ""))[:12]
    if not end:
        return True, f"attempt {short} has no recorded end (host lost)"
    if end == ENDED_KILLED:
        return True, f"attempt {short} was stopped from outside (signal {prev.get('signal', '?')})"
    if end == ENDED_OOM:
        return False, f"attempt {short} was killed for memory (OOM): a restore would replay it"
    if end == ENDED_SUCCEEDED:
        return False, f"attempt {short} succeeded"
    code = prev.get("exit_code")
    return False, f"attempt {short} ended on its own (exit {code if code is not None else 'unknown'})"


def restore_failures(record: Optional[Dict[str, Any]]) -> int:
    if not record:
        return 0
    try:
        return int(record.get("failures", 0))
    except (TypeError, ValueError):
        return 0
