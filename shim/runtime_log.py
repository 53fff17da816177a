"""Log lines in runc's format, appended to the runtime's `--log`.

containerd reports a runtime failure from the last JSON line with
level "error" in that file, so lines are appended (never truncated) and our
own fail-open problems are logged at "warning": a later genuine runc error
stays the line containerd shows.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional


def _timestamp() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e9):09d}Z"


def format_line(level: str, msg: str, log_format: str = "json", **fields: object) -> str:
    if log_format == "json":
        record = {"level": level, "msg": msg, "time": _timestamp()}
        for k, v in fields.items():
            record[k] = v
        return json.dumps(record, separators=(",", ":"), default=str) + "\n"
    extra = "".join(f" {k}={json.dumps(v, default=str)}" for k, v in fields.items())
    return f'time="{_timestamp()}" level={level} msg={json.dumps(msg)}{extra}\n'


def write(
    log_path: Optional[str], level: str, msg: str, log_format: str = "json", stderr: bool = False, **fields: object
) -> None:
    """Append one line to the runtime log; never raises."""
    line = format_line(level, "mmbatch: " + msg, log_format, **fields)
    if stderr or not log_path:
        try:
            sys.stderr.write(line)
            sys.stderr.flush()
        except Exception:
            pass
    if not log_path:
        return
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass
