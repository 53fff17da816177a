"""Files a job holds open on volumes (bind mounts), recorded at checkpoint.

CRIU checks an open file's size on restore ("bad size"). Rootfs files come
back with the rootfs diff, but volume files are not snapshotted: a log the job
kept appending to after the checkpoint is longer on restore. We record each
open volume file's size and, on restore, truncate writable files back to it.
A file that is missing, shorter, or read-only with another size means the
checkpoint cannot be restored on this node: cold start, with the reason.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional

from mmbatch.errors import IncompatibleCheckpoint
from mmbatch.oci import host_path_for

O_ACCMODE = 0o3
O_APPEND = 0o2000


def _fd_flags(pid: int, fd: str, proc: str) -> Optional[int]:
    try:
        with open(f"{proc}/{pid}/fdinfo/{fd}", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        return None
    return None


def scan(pids: Iterable[int], spec: Dict[str, Any], proc: str = "/proc") -> List[Dict[str, Any]]:
    """Open regular files on bind-mounted volumes of these processes."""
    found: Dict[str, Dict[str, Any]] = {}
    for pid in pids:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            link = os.path.join(fd_dir, fd)
            try:
                target = os.readlink(link)
                st = os.stat(link)
            except OSError:
                continue
            if not target.startswith("/") or target.endswith(" (deleted)"):
                continue
            if not (st.st_mode & 0o170000 == 0o100000):
                continue  # regular files only
            if host_path_for(spec, target) is None:
                continue  # in the rootfs or on a tmpfs: CRIU and the diff cover it
            flags = _fd_flags(pid, fd, proc) or 0
            writable = (flags & O_ACCMODE) in (1, 2)
            entry = found.setdefault(target, {"path": target, "size": st.st_size, "writable": False, "append": False})
            entry["size"] = st.st_size
            entry["writable"] = entry["writable"] or writable
            entry["append"] = entry["append"] or bool(flags & O_APPEND)
    return sorted(found.values(), key=lambda e: e["path"])


def plan_restore(recorded: List[Dict[str, Any]], spec: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Check every recorded file against this node; the truncations to make.

    Raises IncompatibleCheckpoint naming the first file that cannot match.
    """
    actions = []
    for entry in recorded:
        path = str(entry.get("path", ""))
        size = int(entry.get("size", 0))
        host = host_path_for(spec, path)
        if host is None:
            raise IncompatibleCheckpoint(
                f"the job had {path} open on a volume that this container does not mount",
                hint="keep job data on shared storage or in the container's rootfs",
            )
        try:
            st = os.stat(host)
        except OSError:
            raise IncompatibleCheckpoint(
                f"volume file {path} (host {host}) is missing on this node",
                hint="host-path scratch space does not move with the job; use shared storage",
            ) from None
        if st.st_size == size:
            continue
        if st.st_size < size:
            raise IncompatibleCheckpoint(f"volume file {path} is shorter ({st.st_size}) than at checkpoint ({size})")
        if not entry.get("writable"):
            raise IncompatibleCheckpoint(f"read-only volume file {path} changed size ({size} -> {st.st_size})")
        actions.append({"path": path, "host": host, "from": st.st_size, "to": size})
    return actions


def truncate(actions: List[Dict[str, Any]]) -> None:
    for a in actions:
        os.truncate(a["host"], a["to"])
