"""Entry point of mmbatch-runtime.

The hot path: parse argv, and unless the call is one we intercept for a
managed container, execv the delegate. Intercepted subcommands live in
shim/commands/<name>.py and are imported only when needed.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

from shim import delegate
from shim.argv import Invocation, is_valid_container_id, parse

INTERCEPTED = ("create", "start", "kill", "delete")


def _fail(inv: Invocation, message: str) -> int:
    from shim import runtime_log

    runtime_log.write(inv.log_path, "error", message, inv.log_format, stderr=True)
    return 1


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
        and (inv.command == "create" or os.path.exists(os.path.join(state_dir, cid, "state.json")))
    ):
        try:
            path = delegate.resolve(name)
        except delegate.DelegateNotFound as e:
            return _fail(inv, str(e))
        from importlib import import_module

        module = import_module(f"shim.commands.{inv.command}")
        return module.run(inv, path, state_dir, problem)
    if problem:
        from shim import runtime_log

        runtime_log.write(inv.log_path, "warning", problem, inv.log_format)
    try:
        path = delegate.resolve(name)
    except delegate.DelegateNotFound as e:
        return _fail(inv, str(e))
    try:
        delegate.exec_delegate(path, args)
    except OSError as e:
        return _fail(inv, f"cannot execute delegate runtime {path}: {e.strerror}")
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
