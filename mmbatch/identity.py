"""Job identity and per-job settings, from a container's OCI spec.

Pure logic. A container is managed when its env has AWS_BATCH_JOB_ID (or
MMBATCH_JOB_KEY outside Batch) and its mode is not "none". The job key is
AWS_BATCH_JOB_ID, plus AWS_BATCH_JOB_ARRAY_INDEX, plus the container's name
within the ECS task; AWS_BATCH_JOB_ATTEMPT changes on retry and is not part
of it. Job ids are untrusted input: the key is sanitized so it is always a
single safe path component / object key segment.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from mmbatch.config import MODES, Config
from mmbatch.durations import parse_duration

JOB_ID_ENV = "AWS_BATCH_JOB_ID"
ARRAY_INDEX_ENV = "AWS_BATCH_JOB_ARRAY_INDEX"
ATTEMPT_ENV = "AWS_BATCH_JOB_ATTEMPT"
JOB_KEY_ENV = "MMBATCH_JOB_KEY"
ECS_CONTAINER_NAME_LABEL = "com.amazonaws.ecs.container-name"

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_KEY = 200

# Per-job knobs: our name, then MMBatch's alias.
KNOBS = {
    "mode": ("MMBATCH_CHECKPOINT_MODE", "MMC_CHECKPOINT_MODE"),
    "interval": ("MMBATCH_CHECKPOINT_INTERVAL", "MMC_CHECKPOINT_INTERVAL"),
    "diagnosis": ("MMBATCH_CHECKPOINT_DIAGNOSIS", "MMC_CHECKPOINT_DIAGNOSIS"),
    "image_path": ("MMBATCH_CHECKPOINT_IMAGE_PATH", "MMC_CHECKPOINT_IMAGE_PATH"),
    "image_subpath": ("MMBATCH_CHECKPOINT_IMAGE_SUBPATH", "MMC_CHECKPOINT_IMAGE_SUBPATH"),
}


def env_of(spec: Mapping[str, Any]) -> Dict[str, str]:
    """The process env of an OCI spec as a dict (later entries win, like execve)."""
    out: Dict[str, str] = {}
    env = (spec.get("process") or {}).get("env") or []
    for item in env:
        if not isinstance(item, str):
            continue
        k, sep, v = item.partition("=")
        if sep and k:
            out[k] = v
    return out


def sanitize_component(raw: str, max_len: int = MAX_KEY) -> str:
    """One safe path component for untrusted text; "" stays "".

    Anything outside [A-Za-z0-9._-] becomes "_"; when that changed the text,
    or it was too long, a hash of the original is appended so two different
    ids never share a key ("a/b" and "a_b" differ).
    """
    if raw == "":
        return ""
    clean = _SAFE.sub("_", raw)
    changed = clean != raw
    if clean.startswith(".") or clean.startswith("-") or clean.startswith("_"):
        clean = "j" + clean
        changed = True
    if changed or len(clean) > max_len:
        digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        clean = clean[: max_len - 17] + "-" + digest
    return clean


def job_key_from(env: Mapping[str, str], container_name: str = "") -> Optional[str]:
    """The sanitized job key, or None when the container is not a job."""
    raw_job = env.get(JOB_ID_ENV, "")
    if raw_job:
        parts = [raw_job]
        index = env.get(ARRAY_INDEX_ENV, "")
        if index and not raw_job.endswith(":" + index):
            parts.append(index)
        if container_name:
            parts.append(container_name)
        raw = "_".join(parts)
    else:
        raw = env.get(JOB_KEY_ENV, "")
        if not raw:
            return None
        if container_name:
            raw = f"{raw}_{container_name}"
    return sanitize_component(raw)


def _knob(env: Mapping[str, str], name: str) -> Optional[str]:
    ours, alias = KNOBS[name]
    if ours in env:
        return env[ours]
    if alias in env:
        return env[alias]
    return None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass
class JobSettings:
    """The effective settings of one job: node config overridden by its env."""

    job_key: Optional[str]
    managed: bool
    mode: str
    interval: float
    diagnosis: bool
    image_path: str = ""
    image_subpath: str = ""
    attempt: str = ""
    batch_job_id: str = ""
    warnings: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "job_key": self.job_key,
            "managed": self.managed,
            "mode": self.mode,
            "interval": self.interval,
            "diagnosis": self.diagnosis,
            "image_path": self.image_path,
            "image_subpath": self.image_subpath,
            "attempt": self.attempt,
            "batch_job_id": self.batch_job_id,
        }


def job_settings(env: Mapping[str, str], cfg: Config, container_name: str = "") -> JobSettings:
    """Decide managed-or-not and the per-job knobs. Bad per-job values are
    ignored with a warning (the job still runs, with the node's setting)."""
    warnings: List[str] = []
    key = job_key_from(env, container_name)
    mode = cfg.checkpoint.mode
    raw_mode = _knob(env, "mode")
    if raw_mode is not None:
        if raw_mode.strip().lower() in MODES:
            mode = raw_mode.strip().lower()
        else:
            warnings.append(f"ignored checkpoint mode {raw_mode!r}: use one of {', '.join(MODES)}")
    interval = cfg.checkpoint.interval
    raw_interval = _knob(env, "interval")
    if raw_interval is not None:
        try:
            value = parse_duration(raw_interval)
            if value < 10:
                raise ValueError("shorter than 10s")
            interval = value
        except ValueError as e:
            warnings.append(f"ignored checkpoint interval {raw_interval!r}: {e}")
    diagnosis = cfg.checkpoint.diagnosis
    raw_diag = _knob(env, "diagnosis")
    if raw_diag is not None:
        low = raw_diag.strip().lower()
        if low in _TRUE:
            diagnosis = True
        elif low in _FALSE:
            diagnosis = False
        else:
            warnings.append(f"ignored diagnosis {raw_diag!r}: use true or false")
    image_path = ""
    raw_path = _knob(env, "image_path")
    if raw_path:
        image_path, problem = _allowed_image_path(raw_path, cfg.checkpoint.allowed_image_paths)
        if problem:
            warnings.append(problem)
    subpath = ""
    raw_sub = _knob(env, "image_subpath")
    if raw_sub:
        subpath = "/".join(sanitize_component(p, 100) for p in raw_sub.split("/") if p not in ("", ".", ".."))
    managed = key is not None and mode != "none"
    return JobSettings(
        job_key=key,
        managed=managed,
        mode=mode,
        interval=interval,
        diagnosis=diagnosis,
        image_path=image_path,
        image_subpath=subpath,
        attempt=env.get(ATTEMPT_ENV, ""),
        batch_job_id=env.get(JOB_ID_ENV, ""),
        warnings=warnings,
    )


def _allowed_image_path(raw: str, allowed: List[str]) -> tuple[str, Optional[str]]:
    import posixpath

    if raw.startswith("s3://"):
        if any(raw == a or raw.startswith(a.rstrip("/") + "/") for a in allowed):
            return raw, None
        return "", f"ignored image path {raw!r}: not under checkpoint.allowed_image_paths"
    norm = posixpath.normpath(raw)
    if not norm.startswith("/"):
        return "", f"ignored image path {raw!r}: must be absolute"
    for root in allowed:
        r = posixpath.normpath(root)
        if norm == r or norm.startswith(r.rstrip("/") + "/"):
            return norm, None
    return "", f"ignored image path {raw!r}: not under checkpoint.allowed_image_paths in the node config"


def store_namespace(job_key: str, image_subpath: str = "") -> str:
    """The key under which a job's checkpoints live in its store."""
    assert job_key
    if image_subpath:
        return sanitize_component(f"{image_subpath}/{job_key}")
    return job_key
