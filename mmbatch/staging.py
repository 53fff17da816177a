"""Where a checkpoint is staged on this node: memory (tmpfs) when it fits.

CRIU writes a dump to staging while the job is frozen, and reads a restore
from it while the job is waiting to start: a tmpfs makes both faster than a
disk (no writeback competing with CRIU). Memory is used only when the node
has room for the images on top of everything else (the job's own memory
stays in use during a dump, and a restore needs the images and the restored
process at once), with a margin; otherwise the configured disk staging_dir.
"""

from __future__ import annotations

import os
from typing import List, Optional

from mmbatch.config import CheckpointSection

MARGIN = 1 << 30  # keep this much memory free beyond the images
MEMORY_SUBDIR = "mmbatch-staging"  # under checkpoint.memory_staging_dir


def mem_available(meminfo: str = "/proc/meminfo") -> int:
    try:
        with open(meminfo, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _is_tmpfs(path: str, mounts: str = "/proc/self/mounts") -> bool:
    best, fstype = "", ""
    try:
        with open(mounts, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and (path == parts[1] or path.startswith(parts[1].rstrip("/") + "/")):
                    if len(parts[1]) >= len(best):
                        best, fstype = parts[1], parts[2]
    except OSError:
        return False
    return fstype == "tmpfs"


def choose(ck: CheckpointSection, expected_bytes: int, meminfo: str = "/proc/meminfo",
           mounts: str = "/proc/self/mounts") -> str:
    """The directory to stage `expected_bytes` of images in."""
    mem_dir: Optional[str] = ck.memory_staging_dir or None
    if not mem_dir or expected_bytes <= 0:
        return ck.staging_dir
    if not os.path.isdir(mem_dir) or not _is_tmpfs(mem_dir, mounts):
        return ck.staging_dir
    if mem_available(meminfo) < expected_bytes + MARGIN:
        return ck.staging_dir
    try:
        st = os.statvfs(mem_dir)
        if st.f_bavail * st.f_frsize < expected_bytes + (64 << 20):
            return ck.staging_dir
    except OSError:
        return ck.staging_dir
    return os.path.join(mem_dir, MEMORY_SUBDIR)


def roots(ck: CheckpointSection) -> List[str]:
    """Every directory `choose` may return: where staging leftovers can be."""
    out = [ck.staging_dir]
    if ck.memory_staging_dir:
        out.append(os.path.join(ck.memory_staging_dir, MEMORY_SUBDIR))
    return out


def container_memory(cgroup_paths: dict) -> int:
    """The memory a container uses now (cgroup v1 or v2), 0 if unknown."""
    for key, name in (("memory", "memory.usage_in_bytes"), ("", "memory.current")):
        base = cgroup_paths.get(key)
        if base:
            try:
                with open(os.path.join(base, name), encoding="ascii") as f:
                    return int(f.read().strip())
            except (OSError, ValueError):
                continue
    return 0
