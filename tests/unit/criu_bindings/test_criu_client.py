"""Transport framing and the client's request/notify loop, against a fake `criu swrk` (no root)."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

import criu_bindings
from criu_bindings import CriuClient, NotifyEvent, criu_report, find_criu
from criu_bindings.errors import (
    CriuError,
    CriuNotFoundError,
    CriuNotifyError,
    CriuUnsupportedError,
    TransportError,
)
from criu_bindings.transport import SeqpacketChannel, ServiceConnection

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))


# --- SOCK_SEQPACKET framing ------------------------------------------------------------------


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ca, cb = SeqpacketChannel(a, timeout=5), SeqpacketChannel(b, timeout=5)
    yield ca, cb
    ca.close()
    cb.close()


@pytest.mark.parametrize("size", [1, 100, 4096, 65536, 150_000])
def test_messages_keep_their_boundaries(pair, size: int) -> None:
    a, b = pair
    first, second = os.urandom(size), os.urandom(3)
    a.send(first)
    assert b.recv().data == first
    a.send(second)
    a.send(first[:10])  # two queued packets stay two messages
    assert b.recv().data == second
    assert b.recv().data == first[:10]


def test_fds_travel_with_a_message(pair) -> None:
    a, b = pair
    r, w = os.pipe()
    try:
        a.send(b"with fd", [r])
        packet = b.recv()
        assert packet.data == b"with fd" and len(packet.fds) == 1
        os.write(w, b"x")
        assert os.read(packet.fds[0], 1) == b"x"
        os.close(packet.fds[0])
    finally:
        os.close(r)
        os.close(w)


def test_eof_and_timeout_are_transport_errors(pair) -> None:
    a, b = pair
    b.settimeout(0.1)
    with pytest.raises(TransportError, match="timed out"):
        b.recv()
    a.close()
    with pytest.raises(TransportError, match="closed"):
        b.recv()


def test_service_connection_errors(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="cannot connect"):
        ServiceConnection(str(tmp_path / "nothing.sock"))


# --- finding criu --------------------------------------------------------------------------------


def test_find_criu_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "mycriu"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "criu").write_text("#!/bin/sh\n")
    (on_path / "criu").chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path))
    monkeypatch.delenv("MMBATCH_CRIU", raising=False)
    assert find_criu() == str(on_path / "criu")
    monkeypatch.setenv("MMBATCH_CRIU", str(exe))
    assert find_criu() == str(exe)
    assert find_criu(str(on_path / "criu")) == str(on_path / "criu")
    with pytest.raises(CriuNotFoundError):
        find_criu(str(tmp_path / "missing"))
    monkeypatch.delenv("MMBATCH_CRIU")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(CriuNotFoundError, match="MMBATCH_CRIU"):
        find_criu()
    assert isinstance(CriuNotFoundError("x"), FileNotFoundError)


def test_report_without_criu_does_not_raise(tmp_path: Path) -> None:
    report = criu_report(str(tmp_path / "no-criu"))
    assert report["criu"] is None and report["version"] is None
    assert report["check"]["ok"] is False and report["errors"]


# --- the client against the fake -----------------------------------------------------------------


class Fake:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.log = tmp_path / "fake.log"
        self.exe = tmp_path / "criu"
        self.exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{os.path.join(HERE, "fake_criu.py")}" "$@"\n')
        self.exe.chmod(self.exe.stat().st_mode | stat.S_IXUSR)
        self.images = tmp_path / "images"
        self.images.mkdir()

    def client(self, scenario: str = "", **kw: Any) -> CriuClient:
        env = dict(os.environ, FAKE_CRIU_SCENARIO=scenario, FAKE_CRIU_LOG=str(self.log), PYTHONPATH=REPO)
        return CriuClient(str(self.exe), env=env, **kw)

    def records(self) -> List[Dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def fake(tmp_path: Path) -> Fake:
    return Fake(tmp_path)


def test_version_and_features(fake: Fake) -> None:
    c = fake.client()
    v = c.version()
    assert (v.major, v.minor, v.sublevel, v.gitid) == (4, 2, 0, "abc")
    assert str(v) == "4.2" and v.as_tuple() == (4, 2, 0)
    assert c.feature_check() == {"mem_dirty_track": False, "lazy_pages": True, "pidfd_store": True}
    assert c.feature_check(["pidfd_store"]) == {"pidfd_store": True}
    assert fake.records()[-1]["req"] == {"type": 9, "features": {"pidfd_store": True}}
    with pytest.raises(ValueError, match="unknown feature"):
        c.feature_check(["soft_dirty"])


def test_report_shape(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    # criu_report() runs criu with our environment
    monkeypatch.setenv("FAKE_CRIU_LOG", str(fake.log))
    monkeypatch.setenv("PYTHONPATH", REPO)
    report = criu_report(str(fake.exe))
    assert report["criu"] == str(fake.exe)
    assert report["version"] == {"major": 4, "minor": 2, "sublevel": 0, "gitid": "abc", "text": "4.2"}
    assert report["features"] == {"mem_dirty_track": False, "lazy_pages": True, "pidfd_store": True}
    assert report["check"] == {"ok": True, "error": None}
    json.dumps(report)


def test_check_failure_names_the_real_error(fake: Fake) -> None:
    with pytest.raises(CriuError) as exc:
        fake.client("check_fails").check()
    # the rlimit noise is skipped; the temporary dir (and its log) is gone
    assert exc.value.log_errors == ["Error (criu/cr-check.c:1): fake kernel is too old"]
    assert "fake kernel is too old" in str(exc.value)
    assert exc.value.log_path is None


def test_dump_serves_notifications_in_order(fake: Fake) -> None:
    events: List[NotifyEvent] = []
    result = fake.client().dump({"pid": 123, "images_dir": str(fake.images)}, notify=events.append)
    assert [e.script for e in events] == ["pre-dump", "network-lock", "post-dump", "network-unlock"]
    assert result.restored is False and result.log_path == str(fake.images / "dump.log")
    recs = fake.records()
    req = recs[0]["req"]
    assert req["type"] == 1
    assert req["opts"]["pid"] == 123 and req["opts"]["notify_scripts"] is True
    assert req["opts"]["log_file"] == "dump.log"
    assert {"images_dir": str(fake.images)} in recs  # the fd resolved through /proc/<our pid>/fd
    replies = [r["req"] for r in recs[1:] if "req" in r]
    assert replies == [{"type": 6, "notify_success": True}] * 4


def test_a_raising_callback_makes_criu_roll_back(fake: Fake) -> None:
    seen: List[str] = []

    def callback(event: NotifyEvent) -> None:
        seen.append(event.script)
        if event.script == "post-dump":
            raise RuntimeError("upload space exhausted")

    with pytest.raises(CriuNotifyError) as exc:
        fake.client().dump({"pid": 123, "images_dir": str(fake.images)}, notify=callback)
    assert exc.value.script == "post-dump"
    assert isinstance(exc.value.__cause__, RuntimeError)
    assert "criu rolled back" in str(exc.value)
    assert seen == ["pre-dump", "network-lock", "post-dump"]
    recs = fake.records()
    assert {"req": {"type": 6, "notify_success": False}} in recs
    assert {"rollback_after": "post-dump"} in recs


def test_keyboard_interrupt_in_a_callback_still_answers_criu(fake: Fake) -> None:
    def callback(event: NotifyEvent) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fake.client().dump({"pid": 123, "images_dir": str(fake.images)}, notify=callback)
    assert {"rollback_after": "pre-dump"} in fake.records()


def test_restore_receives_fds_and_answers_query_ext_files(fake: Fake) -> None:
    kept: List[int] = []
    pids: Dict[str, Any] = {}

    def callback(event: NotifyEvent) -> Any:
        pids[event.script] = event.pid
        if event.script == "orphan-pts-master":
            assert event.fd is not None
            kept.append(event.take_fd())
        if event.script == "query-ext-files":
            return ["file[42:7]"]
        return None

    result = fake.client().restore({"images_dir": str(fake.images)}, notify=callback)
    assert result.pid == 4242
    assert pids["setup-namespaces"] == 4242 and pids["post-restore"] == 4242 and pids["pre-restore"] is None
    assert os.read(kept[0], 100) == b"pty master"
    os.close(kept[0])
    replies = [r["req"] for r in fake.records() if "req" in r and r["req"]["type"] == 6]
    assert replies[-1] == {"type": 6, "notify_success": True, "opts": {"images_dir_fd": -1, "external": ["file[42:7]"]}}


def test_received_fds_are_closed_unless_taken(fake: Fake) -> None:
    got: List[int] = []

    def callback(event: NotifyEvent) -> None:
        if event.fd is not None:
            got.append(event.fd)

    fake.client().restore({"images_dir": str(fake.images)}, notify=callback)
    with pytest.raises(OSError):
        os.fstat(got[0])


def test_inherit_fd_is_passed_to_swrk(fake: Fake) -> None:
    r, w = os.pipe()
    try:
        fake.client().restore({"images_dir": str(fake.images), "inherit_fd": [{"key": "pipe:[1]", "fd": r}]})
    finally:
        os.close(r)
        os.close(w)
    assert {"inherited": "pipe:[1]", "open": True} in fake.records()


def test_criu_dying_is_a_transport_error_with_its_stderr(fake: Fake) -> None:
    with pytest.raises(TransportError) as exc:
        fake.client("die").dump({"pid": 1, "images_dir": str(fake.images)})
    assert "exited with 3" in str(exc.value) and "boom" in str(exc.value)


def test_garbage_from_criu_is_a_transport_error(fake: Fake) -> None:
    with pytest.raises(TransportError, match="undecodable"):
        fake.client("garbage").version()


def test_rejections_and_wrong_types(fake: Fake) -> None:
    with pytest.raises(CriuError) as exc:
        fake.client("reject").version()
    assert exc.value.cr_errno == 22 and "rejected" in str(exc.value) and "EINVAL" in str(exc.value)
    with pytest.raises(TransportError, match="answered VERSION with CHECK"):
        fake.client("wrong_type").version()


def test_a_silent_criu_times_out(fake: Fake) -> None:
    start = time.monotonic()
    with pytest.raises(TransportError, match="timed out"):
        fake.client("hang", query_timeout=0.5).version()
    assert time.monotonic() - start < 10
    assert {"eof": True} in fake.records()  # the fake saw us hang up and exited


def test_pre_dump_refuses_without_dirty_tracking(fake: Fake) -> None:
    with pytest.raises(CriuUnsupportedError) as exc:
        fake.client().pre_dump({"pid": 123, "images_dir": str(fake.images)})
    assert exc.value.feature == "mem_dirty_track"
    assert all(r.get("req", {}).get("type") != 13 for r in fake.records())  # no pre-dump was sent
    result = fake.client().pre_dump({"pid": 123, "images_dir": str(fake.images)}, check_support=False)
    assert result.log_path == str(fake.images / "single-pre-dump.log")


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"images_dir": "/nonexistent/dir", "pid": 1}, "cannot open images dir"),
        ({"pid": 1}, "needs opts\\['images_dir'\\]"),
        ({"images_dir": "IMAGES", "pid": 1, "log_file": "sub/dump.log"}, "'/'"),
        ({"images_dir": "IMAGES", "pid": 1, "leave_runing": True}, "unknown field"),
        ({"images_dir": "IMAGES", "pid": 1, "log_level": "debug"}, "expected int"),
        ({"images_dir": "IMAGES", "pid": 1, "inherit_fd": [{"key": "tty[0:0]"}]}, "inherit_fd.fd is required"),
        ({"images_dir": "IMAGES", "pid": 1, "external": "tty[0:0]"}, "needs a list"),
        ({"images_dir": "IMAGES"}, "needs opts\\['pid'\\]"),
    ],
)
def test_bad_options_fail_before_criu_starts(fake: Fake, opts: Dict[str, Any], match: str) -> None:
    if opts.get("images_dir") == "IMAGES":
        opts = {**opts, "images_dir": str(fake.images)}
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match=match):
        fake.client().dump(opts)
    assert not fake.log.exists()
    assert set(os.listdir("/proc/self/fd")) == before  # the images dir fd was closed


def test_inherit_fd_is_refused_with_a_service(fake: Fake) -> None:
    c = CriuClient(service_address=str(fake.tmp / "criu.sock"))
    with pytest.raises(ValueError, match="swrk"):
        c.restore({"images_dir": str(fake.images), "inherit_fd": [{"key": "x", "fd": 0}]})


def test_service_mode_speaks_the_same_protocol(fake: Fake) -> None:
    # a minimal service: accept one connection, answer VERSION
    address = str(fake.tmp / "criu.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(address)
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            data = conn.recv(4096)
            assert criu_bindings.messages.CRIU_REQ.decode(data) == {"type": 10}
            conn.send(bytes.fromhex("080a10015206080410012001"))

    t = threading.Thread(target=serve)
    t.start()
    try:
        assert str(CriuClient(service_address=address).version()) == "4.1.1"
    finally:
        t.join(5)
        server.close()


def test_no_fd_leaks_across_requests(fake: Fake) -> None:
    c = fake.client()
    c.version()
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        c.dump({"pid": 1, "images_dir": str(fake.images)}, notify=lambda e: None)
        c.restore({"images_dir": str(fake.images)}, notify=lambda e: None)
        with pytest.raises(CriuNotifyError):
            c.dump({"pid": 1, "images_dir": str(fake.images)}, notify=lambda e: 1 / 0)
    assert set(os.listdir("/proc/self/fd")) == before
