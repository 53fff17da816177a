"""Per-container state of the shim: <state_dir>/<container id>/state.json.

Only managed containers get a directory; its absence is the record that a
container is not ours, so start/kill/delete of every other container on the
node cost one failed stat. Never under the runtime's --root: runc refuses a
create whose <root>/<id> already exists. Writes are atomic (temp + rename).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, Optional

STATE_FILE = "state.json"


def container_dir(state_dir: str, container_id: str) -> str:
    # container_id is validated by shim.argv.is_valid_container_id before use.
    return os.path.join(state_dir, container_id)


def exists(state_dir: str, container_id: str) -> bool:
    return os.path.exists(os.path.join(state_dir, container_id, STATE_FILE))


def read(state_dir: str, container_id: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(state_dir, container_id, STATE_FILE), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write(state_dir: str, container_id: str, data: Dict[str, Any]) -> str:
    d = container_dir(state_dir, container_id)
    os.makedirs(d, mode=0o700, exist_ok=True)
    path = os.path.join(d, STATE_FILE)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def update(state_dir: str, container_id: str, **changes: Any) -> Dict[str, Any]:
    data = read(state_dir, container_id) or {}
    data.update(changes)
    write(state_dir, container_id, data)
    return data


def remove(state_dir: str, container_id: str) -> None:
    shutil.rmtree(container_dir(state_dir, container_id), ignore_errors=True)
