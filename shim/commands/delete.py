"""`delete`: record how the job's attempt ended, clean our state, delegate.

The runtime's delete never sees the exit code, but it knows what matters for
the restore policy: whether the engine stopped the container (our `kill`
noted it) and whether the kernel OOM-killed it (the cgroup's oom_kill
counter, read before runc removes the cgroup). That goes into the job's
attempt record now; the exit code comes from the engine's events later, in a
detached finalizer that also deletes the checkpoints of a job that succeeded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Optional

from shim import delegate, runtime_log, state
from shim.argv import Invocation


def _oom_kills(root: str, cid: str) -> int:
    from mmbatch.runc import read_runtime_state

    rstate = read_runtime_state(root, cid) or {}
    paths = rstate.get("cgroup_paths") or {}
    candidates = []
    if paths.get("memory"):
        candidates.append(os.path.join(paths["memory"], "memory.oom_control"))
    if paths.get(""):
        candidates.append(os.path.join(paths[""], "memory.events"))
    for path in candidates:
        try:
            with open(path, encoding="ascii") as f:
                for line in f:
                    k, _, v = line.partition(" ")
                    if k == "oom_kill":
                        return int(v)
        except (OSError, ValueError):
            continue
    return 0


def _cpu_seconds(root: str, cid: str) -> Optional[float]:
    """CPU time the container's cgroup used (cgroup v1 cpuacct.usage in ns, v2
    cpu.stat usage_usec), read before runc removes the cgroup; None if unknown."""
    from mmbatch.runc import read_runtime_state

    paths = (read_runtime_state(root, cid) or {}).get("cgroup_paths") or {}
    for key, name, scale in (("cpuacct", "cpuacct.usage", 1e-9), ("", "cpu.stat", 1e-6)):
        if not paths.get(key):
            continue
        try:
            with open(os.path.join(paths[key], name), encoding="ascii") as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.split()
            if name == "cpuacct.usage" and len(parts) == 1 and parts[0].isdigit():
                return int(parts[0]) * scale
            if len(parts) == 2 and parts[0] == "usage_usec" and parts[1].isdigit():
                return int(parts[1]) * scale
    return None


def run(inv: Invocation, runtime: str, state_dir: str, problem: Optional[str]) -> int:
    cid = inv.container_id or ""
    try:
        st = state.read(state_dir, cid) or {}
        if st.get("managed"):
            _record_end(inv, st, cid)
    except Exception as e:
        runtime_log.write(inv.log_path, "warning", f"delete of {cid[:12]}: {e}", inv.log_format)
    state.remove(state_dir, cid)
    delegate.exec_delegate(runtime, inv.argv)
    return 1


def _record_end(inv: Invocation, st: dict, cid: str) -> None:
    from mmbatch import attempts, config, events
    from mmbatch.checkpointer import open_repository

    if st.get("decision") == "pending":
        return  # our create never finished: nothing ran
    oom = _oom_kills(inv.root, cid)
    if st.get("killed_at"):
        end = attempts.ENDED_KILLED
    elif oom:
        end = attempts.ENDED_OOM
    else:
        end = attempts.ENDED_EXITED
    cfg = config.load()
    events.configure(cfg.log.dir)
    repo = open_repository(cfg, st["job"])
    record = repo.get_record("attempts", cid) or {"container_id": cid, "started_at": st.get("created_at")}
    record.update({"end": end, "ended_at": time.time(), "signal": st.get("kill_signal"), "oom_kills": oom,
                   "cpu_seconds": _cpu_seconds(inv.root, cid)})
    repo.put_record("attempts", cid, record)
    events.emit(events.make("attempt-end", st["job"].get("job_key"), cid, end=end), repo)
    _spawn_finalizer(cid, st)


def _spawn_finalizer(cid: str, st: dict) -> None:
    """Detached: learns the exit code from the engine once it has handled the
    exit (it holds the container's lock during this delete)."""
    import json

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    payload = json.dumps({"container_id": cid, "state": st})
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmbatch.finalize"],
            stdin=subprocess.PIPE, stdout=devnull, stderr=devnull, env=env, start_new_session=True,
            close_fds=True,
        )
        assert proc.stdin is not None
        proc.stdin.write(payload.encode())
        proc.stdin.close()
    finally:
        os.close(devnull)
