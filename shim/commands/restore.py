"""`restore`: the engine restoring a checkpoint itself (`docker start
--checkpoint`), not our restore-on-create.

A managed job was dumped with mmbatch's CRIU options (tcp-close and friends,
through the `org.criu.config` annotation); CRIU refuses to restore such an
image without them ("Need to set the --tcp-close options"). The engine hands
runc a fresh spec without our annotation, so a managed bundle gets the same
preparation as at create, then the delegate's own restore runs.
"""

from __future__ import annotations

from typing import Optional

from shim import delegate, runtime_log
from shim.argv import Invocation


def run(inv: Invocation, runtime: str, state_dir: str, problem: Optional[str]) -> int:
    cid = inv.container_id or ""
    try:
        from shim.commands.create import prepare_managed

        prepare_managed(inv, runtime, state_dir, cid, decision="engine-restore")
    except Exception as e:  # fail open: the delegate's restore still runs
        runtime_log.write(inv.log_path, "warning", f"restore of {cid[:12]}: {type(e).__name__}: {e}",
                          inv.log_format)
    delegate.exec_delegate(runtime, inv.argv)
    return 1
