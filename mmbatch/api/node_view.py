"""What the node API shows of a running mmbatchd, and how a runtime config
change reaches it.

The daemon's main loop owns its state; the API's threads never read it
directly. They post a function to the daemon's inbox (`("call", fn, reply)`)
and wait for its answer, so a snapshot is consistent and a config change
takes effect between two steps of the loop. Store reads (checkpoint lists)
run on the API's thread, from a snapshot of the job.
"""

from __future__ import annotations

import os
import queue
import socket
import time
from typing import Any, Callable, Dict, List, Optional

from mmbatch import config as config_mod
from mmbatch import events, node_info
from mmbatch.errors import ConfigError, MmbatchError

CALL_TIMEOUT = 10.0


class DaemonBusy(MmbatchError):
    """The daemon's loop did not answer in time."""


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("mmbatch")
    except Exception:
        return "unknown"


class DaemonView:
    """The API's window on a Daemon (mmbatch.daemon.Daemon)."""

    def __init__(self, daemon: Any, timeout: float = CALL_TIMEOUT) -> None:
        self.daemon = daemon
        self.timeout = timeout
        self.started_at = time.time()
        self.version = package_version()

    # -- plumbing -----------------------------------------------------------------------

    def call(self, fn: Callable[[], Any]) -> Any:
        reply: queue.Queue = queue.Queue(maxsize=1)
        self.daemon.post("call", fn, reply)
        try:
            ok, value = reply.get(timeout=self.timeout)
        except queue.Empty:
            raise DaemonBusy(f"mmbatchd did not answer within {self.timeout:g}s",
                             hint="it may be starting or stuck; see its log") from None
        if not ok:
            raise value
        return value

    # -- views (run in the daemon's loop) ------------------------------------------------------

    def _job(self, c: Any) -> Dict[str, Any]:
        d = self.daemon
        sj = d.scheduler.get(c.container_id)
        with d._lock:
            busy = c.container_id in d._periodic
        job = c.job
        return {
            "container_id": c.container_id,
            "job_key": c.job_key,
            "batch_job_id": str(job.get("batch_job_id") or ""),
            "attempt": str(job.get("attempt") or ""),
            "decision": str(c.state.get("decision") or ""),
            "restored_from": c.state.get("checkpoint_id") if c.state.get("decision") == "restored" else None,
            "started_at": float(c.started_at),
            "stopped_at": c.stopped_at,
            "frozen": bool(c.frozen),
            "interval": float(c.interval),
            "mode": str(job.get("mode") or ""),
            "last_checkpoint_at": c.last_checkpoint_at,
            "next_checkpoint_at": (sj.next_due if sj is not None and d.cfg.checkpoint.mode != "none"
                                   and d.interruption is None else None),
            "checkpointing": bool(busy or c.container_id in d._final_pending),
            "failures": int(sj.failures) if sj is not None else 0,
            "last_error": (sj.last_error if sj is not None else "")[:2000],
            "final_status": c.final_status,
        }

    def _jobs_now(self) -> List[Dict[str, Any]]:
        return [self._job(c) for c in sorted(self.daemon.containers.values(), key=lambda c: c.started_at)]

    def _job_states(self) -> Dict[str, Dict[str, Any]]:
        return {cid: dict(c.job) for cid, c in self.daemon.containers.items()}

    def runtime_config(self) -> Dict[str, Any]:
        ck = self.daemon.cfg.checkpoint
        return {"mode": ck.mode, "interval": float(ck.interval)}

    def node(self) -> Dict[str, Any]:
        def build() -> Dict[str, Any]:
            jobs = self._jobs_now()
            active = [j for j in jobs if j["stopped_at"] is None]
            return {
                "active": len(active),
                "checkpointing": sum(1 for j in active if j["checkpointing"]),
                "frozen": sum(1 for j in active if j["frozen"]),
                "stopped": len(jobs) - len(active),
                "interruption": dict(self.daemon.interruption) if self.daemon.interruption else None,
                "config": self.runtime_config(),
            }

        snap = self.call(build)
        facts: Dict[str, str] = {}
        try:
            import json

            with open(node_info.node_info_path(), encoding="utf-8") as f:
                facts = {k: v for k, v in json.load(f).items() if isinstance(v, str)}
        except (OSError, ValueError, AttributeError):
            pass
        now = time.time()
        return {
            "hostname": socket.gethostname(),
            "version": self.version,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime_seconds": max(0.0, now - self.started_at),
            "node": facts,
            "config": snap["config"],
            "jobs": {k: snap[k] for k in ("active", "checkpointing", "frozen", "stopped")},
            "interruption": snap["interruption"],
            "event_log": os.path.join(events.log_dir(), "events.log"),
        }

    def jobs(self) -> List[Dict[str, Any]]:
        return self.call(self._jobs_now)

    def find_job(self, ref: str) -> Optional[Dict[str, Any]]:
        """A job by container id, unique container id prefix (>= 4 chars) or job key (newest container)."""
        jobs = self.jobs()
        exact = [j for j in jobs if j["container_id"] == ref]
        if exact:
            return exact[0]
        if len(ref) >= 4:
            pref = [j for j in jobs if j["container_id"].startswith(ref)]
            if len(pref) == 1:
                return pref[0]
        by_key = [j for j in jobs if j["job_key"] == ref]
        return by_key[-1] if by_key else None

    def job_settings(self, container_id: str) -> Optional[Dict[str, Any]]:
        return self.call(lambda: self._job_states().get(container_id))

    def all_job_settings(self) -> Dict[str, Dict[str, Any]]:
        return self.call(self._job_states)

    def repository(self, job: Dict[str, Any]) -> Any:
        from mmbatch.checkpointer import open_repository

        return open_repository(self.daemon.cfg, job)

    # -- config --------------------------------------------------------------------------------

    def config(self) -> Dict[str, Any]:
        d = self.daemon
        file_mode, file_interval = d.file_checkpoint
        rt = self.runtime_config()
        overrides: Dict[str, Any] = {}
        if rt["mode"] != file_mode:
            overrides["mode"] = rt["mode"]
        if rt["interval"] != file_interval:
            overrides["interval"] = rt["interval"]
        return {"path": d.cfg.path, "runtime": rt, "overrides": overrides, "file": redacted_config(d.cfg)}

    def update_config(self, changes: Dict[str, Any]) -> Dict[str, Any]:
        """Validate (ConfigError) and apply a change of mode and/or interval."""
        new = config_mod.apply_changes(self.daemon.cfg, changes)
        self.call(lambda: apply_runtime_config(self.daemon, new.checkpoint.mode, new.checkpoint.interval))
        return self.config()

    def metrics_text(self) -> str:
        return self.daemon.metrics.render()


def apply_runtime_config(daemon: Any, mode: str, interval: float) -> None:
    """In the daemon's loop: the new node mode and interval. Jobs that run at
    the node's interval (not one of their own from their env) move to the new
    one, counted from their last checkpoint."""
    ck = daemon.cfg.checkpoint
    old_interval = ck.interval
    follow = {old_interval, daemon.file_checkpoint[1]}
    if mode not in config_mod.MODES or interval < 10:
        raise ConfigError("invalid runtime change", key="checkpoint")
    ck.mode = mode
    ck.interval = float(interval)
    moved = 0
    for cid, c in daemon.containers.items():
        if c.interval not in follow or c.interval == interval:
            continue
        c.state.setdefault("job", {})["interval"] = float(interval)
        sj = daemon.scheduler.get(cid)
        if sj is not None:
            sj.interval = float(interval)
            if not sj.running and sj.failures == 0:
                sj.next_due = daemon.scheduler.due_after(cid, interval, sj.base)
        moved += 1
    daemon._emit("config-change", None, mode=mode, interval=float(interval), jobs_moved=moved)


_SECRET_WORDS = ("token", "secret", "password", "credential", "kms_key_id", "access_key")


def redact_value(key: str, value: Any) -> Any:
    """A config value with secrets hidden: secret-looking keys, and passwords in URLs."""
    if isinstance(value, str) and value and any(w in key.lower() for w in _SECRET_WORDS) and \
            not key.endswith(("_file", "_path")):
        return "<redacted>"
    if isinstance(value, str) and "://" in value and "@" in value.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = value.split("://", 1)
        host = rest.split("@", 1)[1]
        return f"{scheme}://<redacted>@{host}"
    return value


def redacted_config(cfg: config_mod.Config) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    for section, values in cfg.to_dict().items():
        if isinstance(values, dict):
            out[section] = {k: redact_value(k, v) for k, v in values.items()}
    return out
