"""`kill`: note that the container was stopped from outside, then delegate.

A signal through the runtime comes from the engine or the ECS agent
(`docker stop`, `docker kill`, a node shutting down). The restore policy
restores only jobs stopped from outside, never jobs that ended on their own,
so the first such signal is recorded in our state before runc sends it.
"""

from __future__ import annotations

import time
from typing import Optional

from shim import delegate, runtime_log, state
from shim.argv import Invocation


def run(inv: Invocation, runtime: str, state_dir: str, problem: Optional[str]) -> int:
    cid = inv.container_id or ""
    signal = inv.args[1] if len(inv.args) > 1 else "SIGTERM"
    try:
        st = state.read(state_dir, cid) or {}
        if not st.get("killed_at"):
            state.update(state_dir, cid, killed_at=time.time(), kill_signal=signal)
    except Exception as e:
        runtime_log.write(inv.log_path, "warning", f"kill of {cid[:12]}: {e}", inv.log_format)
    delegate.exec_delegate(runtime, inv.argv)
    return 1
