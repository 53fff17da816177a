"""What the node knows about itself, in files other processes read.

- node.json (MMBATCH_NODE_INFO, default /run/mmbatch/node.json): instance id,
  type, availability zone and life cycle from IMDS, written once by mmbatchd;
  the checkpointer copies it into every manifest.
- `<state_dir>/interrupted`: present while a Spot interruption is being
  handled (written by mmbatchd at the notice, removed when the jobs resume).
  It carries the notice, its deadline (notice time + spot.grace_seconds) and
  how long a stop signal may wait (spot.kill_wait_seconds), so the runtime's
  `kill` needs no config file.
- `<state_dir>/<container id>/final.json`: the container's final checkpoint
  is done (status "committed", or "failed" so nobody waits in vain).

Small and stdlib-only: the runtime's `kill` imports it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

NODE_INFO_ENV = "MMBATCH_NODE_INFO"
DEFAULT_NODE_INFO = "/run/mmbatch/node.json"
INTERRUPTED = "interrupted"
FINAL = "final.json"
DEFAULT_KILL_WAIT = 100.0

# IMDS path -> node.json key
IMDS_FACTS = {
    "instance_id": "/latest/meta-data/instance-id",
    "instance_type": "/latest/meta-data/instance-type",
    "availability_zone": "/latest/meta-data/placement/availability-zone",
    "lifecycle": "/latest/meta-data/instance-life-cycle",
}

# Outcomes of wait_for_final
NOT_INTERRUPTED = "not-interrupted"
COMMITTED = "committed"
FAILED = "failed"
RESUMED = "resumed"
TIMEOUT = "timeout"


def _write_json(path: str, data: Dict[str, Any], mode: int = 0o644) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# -- node.json ---------------------------------------------------------------------

def node_info_path() -> str:
    return os.environ.get(NODE_INFO_ENV) or DEFAULT_NODE_INFO


def facts_from_imds(get: Callable[[str], Optional[str]]) -> Dict[str, str]:
    """node.json's facts, from an IMDS `get(path)` (None = 404). What IMDS
    does not have is left out."""
    out: Dict[str, str] = {}
    for key, path in IMDS_FACTS.items():
        value = get(path)
        if value:
            out[key] = value.strip()
    return out


def write_node_info(facts: Dict[str, str], path: Optional[str] = None) -> str:
    path = path or node_info_path()
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    data = dict(facts)
    data["updated_at"] = time.time()
    _write_json(path, data)
    return path


# -- the interruption marker ---------------------------------------------------------

def interruption_path(state_dir: str) -> str:
    return os.path.join(state_dir, INTERRUPTED)


def write_interruption(state_dir: str, data: Dict[str, Any]) -> None:
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    _write_json(interruption_path(state_dir), data)


def read_interruption(state_dir: str, now: Optional[float] = None) -> Optional[Dict[str, Any]]:
    """The interruption in progress, or None. A marker past its deadline is
    stale (its daemon did not live to remove it) and counts as none."""
    data = _read_json(interruption_path(state_dir))
    if data is None:
        return None
    try:
        deadline = float(data.get("deadline", 0))
    except (TypeError, ValueError):
        return None
    if deadline and (now if now is not None else time.time()) > deadline:
        return None
    return data


def clear_interruption(state_dir: str) -> None:
    _unlink(interruption_path(state_dir))


# -- per-container final checkpoint marker -----------------------------------------------

def final_path(state_dir: str, container_id: str) -> str:
    return os.path.join(state_dir, container_id, FINAL)


def write_final(state_dir: str, container_id: str, data: Dict[str, Any]) -> None:
    _write_json(final_path(state_dir, container_id), data)


def read_final(state_dir: str, container_id: str) -> Optional[Dict[str, Any]]:
    return _read_json(final_path(state_dir, container_id))


def clear_final(state_dir: str, container_id: str) -> None:
    _unlink(final_path(state_dir, container_id))


def wait_for_final(
    state_dir: str,
    container_id: str,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    poll: float = 0.2,
) -> Tuple[str, float]:
    """Hold a stop signal while the node is being interrupted, until this
    container's final checkpoint is done, the jobs resume, or the marker's
    kill_wait_seconds run out. Returns (outcome, seconds waited)."""
    marker = read_interruption(state_dir, now())
    if marker is None:
        return NOT_INTERRUPTED, 0.0
    try:
        limit = float(marker.get("kill_wait_seconds", DEFAULT_KILL_WAIT))
    except (TypeError, ValueError):
        limit = DEFAULT_KILL_WAIT
    t0 = clock()
    while True:
        final = read_final(state_dir, container_id)
        if final is not None:
            return (COMMITTED if final.get("status") == COMMITTED else FAILED), clock() - t0
        if read_interruption(state_dir, now()) is None:
            return RESUMED, clock() - t0
        waited = clock() - t0
        if waited >= limit:
            return TIMEOUT, waited
        sleep(min(poll, max(0.0, limit - waited)))
