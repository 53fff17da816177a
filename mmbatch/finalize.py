"""The end of a managed container's attempt, once the engine knows it.

Started detached by the shim's `delete` (the engine holds the container's
lock while the runtime deletes it, so the exit code cannot be asked for
there). Reads the engine's `die` event for the container, records the exit
code in the job's attempt record, and when the job succeeded (exit 0, not
stopped from outside) deletes its checkpoints, unless diagnosis mode keeps
them. mmbatchd does the same from the event stream when it runs.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Dict, Optional

from mmbatch import attempts, config, events
from mmbatch.checkpointer import open_repository
from mmbatch.engine import DockerEngine


def exit_code_from_engine(engine: DockerEngine, cid: str, since: float, wait: float = 60.0) -> Optional[int]:
    """The exit code of the container's last `die` event, waiting up to `wait`."""
    deadline = time.time() + wait
    for ev in engine.events(since - 1, deadline, {"container": [cid], "event": ["die"]}, timeout=wait + 5):
        attrs = (ev.get("Actor") or {}).get("Attributes") or {}
        if "exitCode" in attrs:
            try:
                return int(attrs["exitCode"])
            except ValueError:
                return None
    return None


def finalize(cid: str, st: Dict[str, Any], cfg: config.Config, engine: Optional[DockerEngine] = None,
             exit_code: Optional[int] = None) -> Dict[str, Any]:
    job = st["job"]
    if exit_code is None:
        engine = engine or DockerEngine(cfg.runtime.docker_socket)
        exit_code = exit_code_from_engine(engine, cid, float(st.get("created_at") or time.time() - 3600))
    repo = open_repository(cfg, job)
    record = repo.get_record("attempts", cid) or {"container_id": cid}
    if record.get("exit_code") is not None:
        return record  # the other finalizer (shim or mmbatchd) got there first
    record["exit_code"] = exit_code
    succeeded = exit_code == 0 and record.get("end") != attempts.ENDED_KILLED
    if succeeded:
        record["end"] = attempts.ENDED_SUCCEEDED
    repo.put_record("attempts", cid, record)
    removed = False
    if succeeded and not job.get("diagnosis"):
        repo.delete_checkpoints()
        removed = True
    events.emit(events.make("job-exit", job.get("job_key"), cid, exit_code=exit_code, end=record.get("end"),
                            checkpoints_removed=removed), repo)
    return record


def main() -> int:
    payload = json.loads(sys.stdin.read())
    cfg = config.load()
    events.configure(cfg.log.dir)
    finalize(payload["container_id"], payload["state"], cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
