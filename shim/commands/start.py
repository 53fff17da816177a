"""`start`: a restored container is already running; starting it is a no-op.

`runc restore --detach` inside our create left the job running, so the
engine's start must succeed without touching it. Anything else is the
delegate's start.
"""

from __future__ import annotations

from typing import Optional

from shim import delegate, runtime_log, state
from shim.argv import Invocation


def run(inv: Invocation, runtime: str, state_dir: str, problem: Optional[str]) -> int:
    cid = inv.container_id or ""
    st = state.read(state_dir, cid) or {}
    if st.get("decision") == "restored":
        try:
            from mmbatch.runc import Runc, identity_flags

            status = (Runc(runtime, identity_flags(inv.globals)).state(cid) or {}).get("status")
        except Exception as e:
            status = None
            runtime_log.write(inv.log_path, "warning", f"state of restored {cid[:12]}: {e}", inv.log_format)
        if status == "running":
            state.update(state_dir, cid, started_at_restore=True)
            _notify(st, cid)
            return 0
        runtime_log.write(
            inv.log_path, "error", f"restored container {cid[:12]} is {status or 'gone'}", inv.log_format
        )
        return 1
    delegate.exec_delegate(runtime, inv.argv)
    return 1


def _notify(st: dict, cid: str) -> None:
    """Tell mmbatchd about the restored job (runc restore runs no poststart hook)."""
    try:
        from hooks.notify import notify

        notify({"event": "restored", "container_id": cid, "job_key": st.get("job", {}).get("job_key")})
    except Exception:
        pass  # the daemon also learns of it from the engine's events
