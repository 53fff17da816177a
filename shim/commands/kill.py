"""`kill`: note that the container was stopped from outside, then delegate.

A stop signal through the runtime comes from the engine or the ECS agent
(`docker stop`, `docker kill`, a node shutting down). The restore policy
restores only jobs stopped from outside, never jobs that ended on their own,
so the first such signal is recorded in our state before runc sends it.
Other signals (`docker kill -s USR1` to a job that traps it) do not stop a
job: a job that then fails on its own must not count as stopped from outside.

During a Spot interruption (mmbatchd wrote `<state_dir>/interrupted`) a
SIGTERM or SIGKILL waits for the container's final checkpoint (mmbatchd
writes `<state_dir>/<id>/final.json` once it is committed), bounded by the
marker's kill_wait_seconds, and only then goes to the job. The job stays
frozen through a SIGTERM (it is queued and acted on only if the job is ever
resumed); a SIGKILL is followed by a thaw, so the kill takes effect even on
kernels whose freezer holds frozen tasks through it.
"""

from __future__ import annotations

import os
import time
from typing import Optional

from shim import delegate, runtime_log, state
from shim.argv import Invocation

SIGKILL = 9
SIGTERM = 15


def signal_number(name: str) -> Optional[int]:
    """runc's forms: "9", "KILL", "SIGKILL" (any case). None when unknown."""
    s = name.strip().upper()
    if s.isdigit():
        return int(s)
    import signal

    try:
        return int(signal.Signals[s if s.startswith("SIG") else "SIG" + s])
    except KeyError:
        return None


STOP_SIGNALS = {1, 2, 3, SIGKILL, SIGTERM}  # HUP, INT, QUIT, KILL, TERM


def run(inv: Invocation, runtime: str, state_dir: str, problem: Optional[str]) -> int:
    cid = inv.container_id or ""
    signal = inv.args[1] if len(inv.args) > 1 else "SIGTERM"
    st: dict = {}
    num = signal_number(signal)
    try:
        st = state.read(state_dir, cid) or {}
        if not st.get("killed_at") and num in STOP_SIGNALS:
            st = state.update(state_dir, cid, killed_at=time.time(), kill_signal=signal)
    except Exception as e:
        runtime_log.write(inv.log_path, "warning", f"kill of {cid[:12]}: {e}", inv.log_format)
    if num in (SIGTERM, SIGKILL):
        try:
            from mmbatch import node_info

            if not os.path.exists(node_info.interruption_path(state_dir)):
                outcome, waited = node_info.NOT_INTERRUPTED, 0.0
            else:
                outcome, waited = node_info.wait_for_final(state_dir, cid)
            if outcome != node_info.NOT_INTERRUPTED:
                runtime_log.write(inv.log_path, "info", f"{signal} of {cid[:12]} held {waited:.1f}s during a Spot "
                                  f"interruption: final checkpoint {outcome}", inv.log_format)
            st = state.read(state_dir, cid) or st
        except Exception as e:
            runtime_log.write(inv.log_path, "warning", f"kill of {cid[:12]}: {e}", inv.log_format)
        if st.get("frozen_by"):
            return _signal_frozen(inv, runtime, state_dir, cid, num)
    delegate.exec_delegate(runtime, inv.argv)
    return 1


def _signal_frozen(inv: Invocation, runtime: str, state_dir: str, cid: str, num: int) -> int:
    """A container mmbatchd froze: signal it without thawing it, except that a
    SIGKILL is followed by a thaw so that it dies."""
    import subprocess

    from mmbatch.runc import Runc, identity_flags

    runc = Runc(runtime, identity_flags(inv.globals))
    rc = None
    if inv.flags.get("all") and num != SIGKILL:
        rc = _signal_all_frozen(runc, cid, num)  # runc's kill --all would thaw the cgroup
    if rc is None:
        rc = subprocess.call([runtime] + inv.argv)
    if num == SIGKILL:
        runc.run("resume", cid, check=False, timeout=30)
        try:
            state.update(state_dir, cid, frozen_by=None, thawed_for_kill_at=time.time())
        except Exception as e:
            runtime_log.write(inv.log_path, "warning", f"kill of {cid[:12]}: {e}", inv.log_format)
    return rc


def _signal_all_frozen(runc, cid: str, num: int) -> Optional[int]:
    import json

    proc = runc.run("ps", "--format", "json", cid, check=False, timeout=30)
    try:
        pids = [int(p) for p in json.loads(proc.stdout or b"null") or []]
    except (ValueError, TypeError):
        return None
    if proc.returncode != 0 or not pids:
        return None
    for pid in pids:
        try:
            os.kill(pid, num)
        except ProcessLookupError:
            pass
    return 0
