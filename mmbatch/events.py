"""Events: every checkpoint, restore, fallback and interruption.

An event is a JSON line in the node log (/var/log/mmbatch/events.log) and,
when a store is at hand, a record under the job in the store, where the
management server reads it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Any, Dict, Optional

DEFAULT_LOG_DIR = "/var/log/mmbatch"
_configured_dir = ""


def configure(directory: str) -> None:
    """Use the node config's `log.dir`; every entry point that loads the
    config calls this, so the runtime, the CLI and mmbatchd agree on where
    events.log is. MMBATCH_LOG_DIR still wins (private test nodes)."""
    global _configured_dir
    _configured_dir = directory


def log_dir() -> str:
    return os.environ.get("MMBATCH_LOG_DIR") or _configured_dir or DEFAULT_LOG_DIR


def make(kind: str, job_key: Optional[str], container_id: Optional[str], **fields: Any) -> Dict[str, Any]:
    ev = {
        "time": time.time(),
        "kind": kind,
        "job_key": job_key,
        "container_id": container_id,
        "node": socket.gethostname(),
        "id": uuid.uuid4().hex[:12],
    }
    ev.update(fields)
    return ev


def emit(event: Dict[str, Any], repo: Any = None, directory: Optional[str] = None) -> None:
    """Write the event to the node log and (best effort) to the job's store."""
    line = json.dumps(event, sort_keys=True, default=str)
    d = directory or log_dir()
    try:
        os.makedirs(d, mode=0o750, exist_ok=True)
        fd = os.open(os.path.join(d, "events.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    except OSError:
        pass
    if repo is not None:
        try:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(event["time"]))
            repo.put_record("events", f"{stamp}-{event['id']}", event)
        except Exception:
            pass
