"""Entry point of mmbatch-runtime.

The hot path: parse argv, and unless the call is one we intercept for a
managed container, execv the delegate. Intercepted subcommands live in
shim/commands/<name>.py and are imported only when needed.
"""

from __future__ import annotations

import posix
import sys

from shim import delegate
from shim.argv import Invocation, is_valid_container_id, parse

TYPE_CHECKING = False  # typing and os cost milliseconds per call: not imported here
if TYPE_CHECKING:
    from typing import List, Optional

INTERCEPTED = ("create", "restore", "start", "kill", "delete")
PREPARED = ("create", "restore")  # decided from the bundle, before any state exists


def _fail(inv: Invocation, message: str) -> int:
    from shim import runtime_log

    runtime_log.write(inv.log_path, "error", message, inv.log_format, stderr=True)
    return 1


def _exists(path: str) -> bool:
    try:
        posix.stat(path)
    except OSError:
        return False
    return True


JOB_MARKERS = (b'"AWS_BATCH_JOB_ID=', b'"MMBATCH_JOB_KEY=')


def _may_be_job(inv: Invocation) -> bool:
    """A byte-level look at the bundle's config.json, before any JSON parser
    is imported: a spec without a job id in it is never ours. Unreadable
    means "maybe": the full create path decides and fails open."""
    bundle = inv.flags.get("bundle") or "."
    try:
        with open(f"{bundle}/config.json", "rb") as f:
            data = f.read()
    except OSError:
        return True
    return any(m in data for m in JOB_MARKERS)


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    inv = parse(args)
    name, state_dir, problem = delegate.runtime_settings()
    cid = inv.container_id
    if (
        not inv.opaque
        and inv.command in INTERCEPTED
        and cid is not None
        and is_valid_container_id(cid)
        and (inv.command in PREPARED or _exists(f"{state_dir}/{cid}/state.json"))
    ):
        try:
            path = delegate.resolve(name)
        except delegate.DelegateNotFound as e:
            return _fail(inv, str(e))
        if inv.command not in PREPARED or _may_be_job(inv):
            from importlib import import_module

            module = import_module(f"shim.commands.{inv.command}")
            return module.run(inv, path, state_dir, problem)
        name = path  # resolved already: fall through to the plain exec
    if problem:
        from shim import runtime_log

        runtime_log.write(inv.log_path, "warning", problem, inv.log_format)
    try:
        path = name if name.startswith("/") else delegate.resolve(name)
    except delegate.DelegateNotFound as e:
        return _fail(inv, str(e))
    try:
        delegate.exec_delegate(path, args)
    except OSError as e:
        return _fail(inv, f"cannot execute delegate runtime {path}: {e.strerror}")
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
