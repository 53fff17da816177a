"""Compatibility of a checkpoint with the container about to start.

Pure logic plus two small readers (/proc/cpuinfo, versions). A checkpoint
records what the job itself defines (image, args, cwd, user, the env the job
definition sets, mount destinations), the CPU flags it may have used and the
CRIU that wrote it. Nothing Docker or ECS sets per host or per task is
hashed: those differ on every retry by design.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from mmbatch.identity import env_of

# Set per host or per task by Docker, ECS or Batch: never part of the job hash.
VOLATILE_ENV = frozenset(
    {
        "HOSTNAME",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "ECS_CONTAINER_METADATA_URI",
        "ECS_CONTAINER_METADATA_URI_V4",
        "ECS_AGENT_URI",
        "AWS_BATCH_JOB_ATTEMPT",
        "AWS_BATCH_CE_NAME",
        "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS",
        "AWS_EXECUTION_ENV",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    }
)
# Mount sources of these carry the container id; only destinations are hashed.


def job_hash(spec: Mapping[str, Any]) -> str:
    """A hash of what the job defines, stable across retries and hosts."""
    process = spec.get("process") or {}
    env = {k: v for k, v in env_of(spec).items() if k not in VOLATILE_ENV}
    user = process.get("user") or {}
    mounts = sorted(
        {str(m.get("destination", "")) for m in (spec.get("mounts") or []) if isinstance(m, dict)}
    )
    doc = {
        "args": process.get("args") or [],
        "cwd": process.get("cwd") or "/",
        "user": [user.get("uid", 0), user.get("gid", 0), sorted(user.get("additionalGids") or [])],
        "env": sorted(env.items()),
        "mounts": mounts,
        "terminal": bool(process.get("terminal")),
    }
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def cpu_flags(cpuinfo_path: str = "/proc/cpuinfo") -> List[str]:
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return sorted(set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return []


def parse_version(text: str) -> Tuple[int, ...]:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    if not m:
        return ()
    return tuple(int(x) for x in m.groups() if x is not None)


# CPU flags a restored process can miss without harm: they describe the host
# or the hypervisor, not instructions a program may have chosen at start-up.
IGNORED_CPU_FLAGS = frozenset(
    {
        "hypervisor", "rep_good", "nopl", "xtopology", "tsc_known_freq", "tsc_reliable",
        "nonstop_tsc", "cpuid", "tsc_adjust", "arat", "constant_tsc", "ht", "ibrs", "ibpb",
        "stibp", "ssbd", "ibrs_enhanced", "md_clear", "flush_l1d", "arch_capabilities",
        "pti", "vmmcall", "tsc_deadline_timer", "x2apic", "umip", "pku", "ospke",
    }
)


def check(
    recorded: Mapping[str, Any],
    current: Mapping[str, Any],
) -> Optional[str]:
    """None when a checkpoint with `recorded` compat can restore here, else why not."""
    if recorded.get("image_id") and current.get("image_id") and recorded["image_id"] != current["image_id"]:
        return f"image differs ({str(recorded['image_id'])[:19]} vs {str(current['image_id'])[:19]})"
    if recorded.get("job_hash") != current.get("job_hash"):
        return "the job definition differs (args, cwd, user, env or mounts)"
    if recorded.get("arch") and current.get("arch") and recorded["arch"] != current["arch"]:
        return f"architecture differs ({recorded['arch']} vs {current['arch']})"
    missing = set(recorded.get("cpu_flags") or []) - set(current.get("cpu_flags") or []) - IGNORED_CPU_FLAGS
    if missing and current.get("cpu_flags"):
        return "this CPU lacks flags the job may use: " + ", ".join(sorted(missing)[:8])
    rec_criu = parse_version(str(recorded.get("criu_version", "")))
    cur_criu = parse_version(str(current.get("criu_version", "")))
    if rec_criu and cur_criu and cur_criu < rec_criu:
        return (f"CRIU here ({current.get('criu_version')}) is older than the one that dumped "
                f"({recorded.get('criu_version')})")
    from mmbatch.gpu import compat_problem  # same model and count, a driver at least as new

    gpu_problem = compat_problem(recorded.get("gpu"), current.get("gpu"))
    if gpu_problem:
        return gpu_problem
    return None


def node_compat(spec: Mapping[str, Any], image_id: str, criu_version: str, runc_version: str,
                gpu: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The compat record for a container on this node."""
    return {
        "image_id": image_id,
        "job_hash": job_hash(spec),
        "cpu_flags": cpu_flags(),
        "criu_version": criu_version,
        "runc_version": runc_version,
        "arch": platform.machine(),
        "kernel": platform.release(),
        "gpu": gpu,  # mmbatch.gpu.GpuInfo.to_compat() of a GPU job, else None
    }
