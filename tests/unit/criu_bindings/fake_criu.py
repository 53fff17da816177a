"""A stand-in for ``criu swrk <fd>`` that speaks CRIU's RPC wire format, for tests without root.

It follows criu/cr-service.c: one criu_req per SOCK_SEQPACKET packet,
notifications as criu_resp{type: NOTIFY} answered by criu_req{type: NOTIFY,
notify_success}, a failed notification making the request fail, fds as
SCM_RIGHTS. It is driven by $FAKE_CRIU_SCENARIO and records what it
receives, as JSON lines, in $FAKE_CRIU_LOG. Real CRIU is exercised by the
functional tests; this fake covers the error paths real CRIU will not take
on demand (crashing, garbage, hanging).
"""

from __future__ import annotations

import array
import json
import os
import socket
import sys

from criu_bindings import messages

REQ = messages.CRIU_REQ_TYPE


def log(record: object) -> None:
    path = os.environ.get("FAKE_CRIU_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def recv(sk: socket.socket) -> dict:
    size = sk.recv_into(bytearray(1), 1, socket.MSG_PEEK | socket.MSG_TRUNC)
    if size == 0:
        log({"eof": True})
        sys.exit(0)
    data = sk.recv(size)
    req = messages.CRIU_REQ.decode(data)
    log({"req": req})
    return req


def send(sk: socket.socket, resp: dict, fd: int = -1) -> None:
    data = messages.CRIU_RESP.encode(resp)
    if fd >= 0:
        sk.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())])
    else:
        sk.send(data)


def notify(sk: socket.socket, script: str, pid: int = 0, fd: int = -1) -> bool:
    n: dict = {"script": script}
    if pid:
        n["pid"] = pid
    send(sk, {"type": "NOTIFY", "success": True, "notify": n}, fd)
    reply = recv(sk)
    return reply["type"] == REQ.NOTIFY and bool(reply.get("notify_success"))


def main() -> None:
    assert sys.argv[1] == "swrk", sys.argv
    sk = socket.socket(fileno=int(sys.argv[2]))
    scenario = os.environ.get("FAKE_CRIU_SCENARIO", "")
    req = recv(sk)
    kind = req["type"]
    opts = req.get("opts", {})
    if opts.get("images_dir_fd", -1) >= 0:
        # as CRIU does: resolve the fd through the peer's /proc
        ucred = sk.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        peer = int.from_bytes(ucred[:4], sys.byteorder)
        log({"images_dir": os.readlink(f"/proc/{peer}/fd/{opts['images_dir_fd']}")})
    for entry in opts.get("inherit_fd", []):
        log({"inherited": entry["key"], "open": _is_open(entry["fd"])})

    if scenario == "die":
        sys.stderr.write("fake criu: boom\n")
        sys.exit(3)
    if scenario == "garbage":
        sk.send(b"\xff\xff\xff")
        return
    if scenario == "hang":
        recv(sk)  # returns only at EOF, when the client gives up
        return
    if scenario == "reject":
        send(sk, {"type": "EMPTY", "success": False, "cr_errno": 22, "cr_errmsg": "Invalid req"})
        return
    if scenario == "wrong_type":
        send(sk, {"type": "CHECK", "success": True})
        return
    if kind == REQ.VERSION:
        send(sk, {"type": kind, "success": True, "version": {"major_number": 4, "minor_number": 2, "gitid": "abc"}})
        return
    if kind == REQ.FEATURE_CHECK:
        asked = req.get("features", {})
        send(sk, {"type": kind, "success": True, "features": {k: k != "mem_track" for k in asked}})
        return
    if kind == REQ.CHECK:
        ok = scenario != "check_fails"
        if not ok:
            with open(os.path.join(os.readlink(f"/proc/self/fd/{_images_fd(sk, opts)}"), opts["log_file"]), "w") as f:
                f.write("Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: x\n")
                f.write("Error (criu/cr-check.c:1): fake kernel is too old\n")
        send(sk, {"type": kind, "success": ok})
        return

    scripts = {
        REQ.DUMP: ["pre-dump", "network-lock", "post-dump", "network-unlock"],
        REQ.SINGLE_PRE_DUMP: ["pre-dump", "post-dump"],
        REQ.RESTORE: ["pre-restore", "setup-namespaces", "orphan-pts-master", "post-restore", "query-ext-files"],
    }[kind]
    ok = True
    if opts.get("notify_scripts"):
        for script in scripts:
            fd = -1
            if script == "orphan-pts-master":
                r, w = os.pipe()
                os.write(w, b"pty master")
                os.close(w)
                fd = r
            if not notify(sk, script, pid=4242 if script in ("setup-namespaces", "post-restore") else 0, fd=fd):
                ok = False
                log({"rollback_after": script})
                break
    resp: dict = {"type": kind, "success": ok}
    if not ok:
        resp.update(cr_errno=0, cr_errmsg="Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self")
    if kind == REQ.DUMP:
        resp["dump"] = {"restored": False}
    if kind == REQ.RESTORE:
        resp["restore"] = {"pid": 4242 if ok else -1}
    send(sk, resp)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _images_fd(sk: socket.socket, opts: dict) -> int:
    ucred = sk.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    peer = int.from_bytes(ucred[:4], sys.byteorder)
    return os.open(f"/proc/{peer}/fd/{opts['images_dir_fd']}", os.O_RDONLY | os.O_DIRECTORY)


if __name__ == "__main__":
    main()
