"""Reading and changing an OCI bundle's config.json, and the CRIU options
mmbatch gives runc through the `org.criu.config` annotation."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from mmbatch.config import CheckpointSection

CRIU_CONFIG_ANNOTATION = "org.criu.config"
JOB_ANNOTATION = "io.mmbatch.job-key"


def spec_path(bundle: str) -> str:
    return os.path.join(bundle, "config.json")


def read_spec(bundle: str) -> Dict[str, Any]:
    with open(spec_path(bundle), encoding="utf-8") as f:
        spec = json.load(f)
    if not isinstance(spec, dict):
        raise ValueError(f"{spec_path(bundle)}: not a JSON object")
    return spec


def write_spec(bundle: str, spec: Dict[str, Any]) -> None:
    """Atomic rewrite, keeping the file's mode."""
    path = spec_path(bundle)
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        mode = 0o644
    tmp = f"{path}.mmbatch.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(spec, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def criu_options(ck: CheckpointSection) -> List[str]:
    """CRIU config-file lines for batch jobs. Settings in this file override
    what runc asks over RPC (runc's handleCriuConfigurationFile)."""
    lines = []
    if ck.tcp_close:
        # Host networking: the IP changes on restore, so established TCP
        # cannot survive; dump them closed instead of failing the dump.
        lines.append("tcp-close")
    if ck.file_locks:
        lines.append("file-locks")
    if ck.ext_unix_sk:
        lines.append("ext-unix-sk")
    lines.append(f"ghost-limit {ck.ghost_limit}")
    # No "network-lock skip": CRIU 4.1.1 in RPC mode (runc) fails the dump
    # with it. With tcp-close nothing is locked in a shared host namespace.
    return lines


def write_criu_config(path: str, lines: List[str]) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("# written by mmbatch-runtime; read by CRIU through runc\n")
        f.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def inject(spec: Dict[str, Any], criu_config_path: str, job_key: str) -> Dict[str, Any]:
    annotations = spec.setdefault("annotations", {})
    if not isinstance(annotations, dict):
        annotations = {}
        spec["annotations"] = annotations
    annotations[CRIU_CONFIG_ANNOTATION] = criu_config_path
    annotations[JOB_ANNOTATION] = job_key
    return spec


def rootfs_path(spec: Dict[str, Any], bundle: str) -> str:
    root = (spec.get("root") or {}).get("path") or "rootfs"
    return root if os.path.isabs(root) else os.path.join(bundle, root)


def bind_mounts(spec: Dict[str, Any]) -> List[Dict[str, str]]:
    """(destination, source) of bind mounts, longest destination first."""
    out = []
    for m in spec.get("mounts") or []:
        if not isinstance(m, dict):
            continue
        opts = m.get("options") or []
        if m.get("type") == "bind" or "bind" in opts or "rbind" in opts:
            out.append({"destination": str(m.get("destination", "")), "source": str(m.get("source", ""))})
    out.sort(key=lambda m: len(m["destination"]), reverse=True)
    return out


def host_path_for(spec: Dict[str, Any], container_path: str) -> Optional[str]:
    """The host path behind a container path on a bind-mounted volume."""
    for m in bind_mounts(spec):
        dest = m["destination"].rstrip("/") or "/"
        if container_path == dest or container_path.startswith(dest + "/"):
            rest = container_path[len(dest):].lstrip("/")
            return os.path.join(m["source"], rest) if rest else m["source"]
    return None
