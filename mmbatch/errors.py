"""The error hierarchy of mmbatch: every error carries what it is about.

User-facing errors say what to do. Errors about one container or job carry
its container id and job key, so a log line is enough to act on.
"""

from __future__ import annotations

from typing import Optional


class MmbatchError(Exception):
    """Base of every error mmbatch raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        container_id: Optional[str] = None,
        job_key: Optional[str] = None,
        hint: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.container_id = container_id
        self.job_key = job_key
        self.hint = hint

    def __str__(self) -> str:
        parts = [self.message]
        ctx = []
        if self.container_id:
            ctx.append(f"container {self.container_id[:12]}")
        if self.job_key:
            ctx.append(f"job {self.job_key}")
        if ctx:
            parts.append(f"({', '.join(ctx)})")
        if self.hint:
            parts.append(f"- {self.hint}")
        return " ".join(parts)


class ConfigError(MmbatchError):
    """The configuration file or a per-job setting is invalid."""

    def __init__(self, message: str, *, path: str = "", key: str = "", hint: Optional[str] = None) -> None:
        where = path
        if key:
            where = f"{path}: {key}" if path else key
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.path = path
        self.key = key


class JobIdentityError(MmbatchError):
    """A job id or key cannot be used (empty after sanitizing, and so on)."""


class StoreError(MmbatchError):
    """The checkpoint store failed (unreachable, unwritable, full, corrupt)."""


class ObjectNotFound(StoreError):
    """An object the caller asked for does not exist in the store."""


class CorruptObject(StoreError):
    """An object's content does not match its recorded checksum or size."""


class ManifestError(StoreError):
    """A manifest is malformed or of a format this version cannot read."""


class CheckpointError(MmbatchError):
    """Taking a checkpoint failed; the job keeps running."""


class CheckpointBusy(CheckpointError):
    """Another checkpoint of the same container is in progress."""


class RestoreError(MmbatchError):
    """Restoring a checkpoint failed; the caller falls back."""


class IncompatibleCheckpoint(RestoreError):
    """A checkpoint cannot be restored on this node or into this container."""


class RuntimeCommandError(MmbatchError):
    """The delegate runtime (runc) failed; carries its argv and stderr."""

    def __init__(self, message: str, *, argv: Optional[list] = None, stderr: str = "", **kw) -> None:
        super().__init__(message, **kw)
        self.argv = argv or []
        self.stderr = stderr

    def __str__(self) -> str:
        base = super().__str__()
        if self.stderr:
            return f"{base}: {self.stderr.strip()[-2000:]}"
        return base


class EngineError(MmbatchError):
    """The container engine's API (dockerd) failed or is unreachable."""
