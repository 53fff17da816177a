"""Entry point of mmbatch-hook: `mmbatch-hook <createRuntime|poststart|poststop>`.

The runtime passes the container's state as JSON on stdin. The hook always
exits 0: a hook failure would fail the container, and notifications are
best effort.
"""

from __future__ import annotations

import json
import sys
import time
from typing import List, Optional

from hooks.notify import notify

STAGES = ("createRuntime", "createContainer", "startContainer", "poststart", "poststop", "prestart")


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    stage = args[0] if args else "poststart"
    try:
        st = json.loads(sys.stdin.read() or "{}")
    except ValueError:
        st = {}
    if stage not in STAGES or not isinstance(st, dict):
        return 0
    notify({
        "event": stage,
        "container_id": st.get("id"),
        "pid": st.get("pid"),
        "bundle": st.get("bundle"),
        "annotations": st.get("annotations") or {},
        "time": time.time(),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
