"""Fire-and-forget notifications to mmbatchd over a unix datagram socket.

Never blocks a container: if the daemon is not listening the message is
dropped (mmbatchd reconciles with the engine when it starts).
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, Dict

DEFAULT_SOCKET = "/run/mmbatch/hook.sock"


def socket_path() -> str:
    return os.environ.get("MMBATCH_HOOK_SOCKET") or DEFAULT_SOCKET


def notify(message: Dict[str, Any], path: str = "") -> bool:
    path = path or socket_path()
    data = json.dumps(message, separators=(",", ":")).encode()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        s.sendto(data, path)
        return True
    except OSError:
        return False
    finally:
        s.close()
