"""criu_bindings against the real CRIU: queries, dump/restore of real process trees, notifications.

Each comparison is with CRIU's own CLI (`criu check`, `criu dump
--display-stats`) or with crit's decoding (`crit decode`, when installed),
never with our own code alone.
"""

from __future__ import annotations

import errno
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from typing import Any, Dict, List, Optional

import pytest
from criu_procs import Trees, alive, children, image_pids, long_sleeps, proc_state, reap, wait_for

from criu_bindings import (
    PE_PRESENT,
    CriuClient,
    CriuError,
    CriuNotifyError,
    CriuUnsupportedError,
    NotifyEvent,
    criu_report,
    iter_pagemaps,
    messages,
    read_dump_stats,
    read_inventory,
    read_pagemap,
    read_restore_stats,
)

PAGE = os.sysconf("SC_PAGE_SIZE")
CRIT = shutil.which("crit")
DUMP_SCRIPTS = {"pre-dump", "network-lock", "network-unlock", "post-dump", "query-ext-files", "status-ready"}


def in_order(seen: List[str], expected: List[str]) -> bool:
    """`expected` names appear in `seen` in this order (others may come between)."""
    it = iter(seen)
    return all(name in it for name in expected)


def crit_decode(path: str) -> Optional[Dict[str, Any]]:
    if not CRIT:
        return None
    out = subprocess.run([CRIT, "decode", "-i", path], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout)


def check_dump_dir(images_dir: str, work_dir: Optional[str] = None) -> Dict[str, Any]:
    """Invariants of a finished dump, read with our readers and cross-checked with crit."""
    stats = read_dump_stats(work_dir or images_dir)
    inventory = read_inventory(images_dir)
    assert inventory["img_version"] == 2 and inventory["fdinfo_per_id"] is True
    total_pages = 0
    pagemaps = list(iter_pagemaps(images_dir))
    assert pagemaps, "a dump has pagemaps"
    for pm_path, pages_path, extents in pagemaps:
        pm = read_pagemap(pm_path)
        present = sum(e.nr_pages for e in pm.entries if e.flags & PE_PRESENT)
        # the pagemap's present pages times the page size are the pages image
        assert present * PAGE == os.path.getsize(pages_path), pm_path
        assert sum(x.length for x in extents) == os.path.getsize(pages_path)
        if not os.path.basename(pm_path).startswith("pagemap-shmem-"):
            total_pages += present
        theirs = crit_decode(pm_path)
        if theirs is not None:
            assert theirs["entries"][0] == {"pages_id": pm.pages_id}
            raw = raw_pagemap_entries(pm_path)
            assert len(theirs["entries"]) - 1 == len(pm.entries) == len(raw)
            for e, r, t in zip(pm.entries, raw, theirs["entries"][1:]):
                assert (t["vaddr"], t.get("flags"), t.get("in_parent", False)) == (e.vaddr, e.flags, e.in_parent)
                # crit may predate CRIU 4.2's page count in field 5: then it shows field 2 (0 from 4.2 on)
                assert t["nr_pages"] in (e.nr_pages, r["compat_nr_pages"])
    assert stats.pages_written == total_pages
    assert stats.pages_scanned >= stats.pages_written
    assert stats.frozen_time >= stats.memdump_time > 0
    theirs = crit_decode(os.path.join(work_dir or images_dir, "stats-dump"))
    if theirs is not None:
        assert theirs["entries"][0]["dump"] == stats.__dict__
    theirs = crit_decode(os.path.join(images_dir, "inventory.img"))
    if theirs is not None:
        ours = dict(inventory, lsmtype=messages.LSMTYPE.name_of(inventory["lsmtype"]))
        assert {k: v for k, v in ours.items() if k in theirs["entries"][0]} == theirs["entries"][0]
    return {"stats": stats, "inventory": inventory, "pagemaps": pagemaps}


def running(pid: int) -> bool:
    """Alive and not stopped or traced (D, a short uninterruptible wait, counts as running)."""
    return alive(pid) and proc_state(pid) in "RSD"


def raw_pagemap_entries(path: str) -> List[Dict[str, Any]]:
    """pagemap_entry dicts as stored, without CRIU's compat rules."""
    with open(path, "rb") as f:
        data = f.read()
    pos, out = 8, []
    while pos < len(data):
        (size,) = struct.unpack_from("=I", data, pos)
        out.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return [messages.PAGEMAP_ENTRY.decode(e) for e in out[1:]]  # out[0] is the pagemap_head


def keeps_forking(pid: int, timeout: float = 3.0) -> bool:
    """The loop runs: sh starts a new `sleep 0.1` child."""
    first = set(children(pid))
    return wait_for(lambda: bool(set(children(pid)) - first), timeout)


def parasite_left(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return "CRIUMFD" in f.read()


# --- queries -----------------------------------------------------------------------------------


def test_version_agrees_with_cli(client: CriuClient, criu_bin: str) -> None:
    v = client.version()
    out = subprocess.run([criu_bin, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"Version:\s*(\S+)", out)
    assert m, out
    assert str(v) == m.group(1)
    if "GitID" in out:
        assert v.gitid and v.gitid in out


def _cli_feature(criu_bin: str, name: str) -> bool:
    return subprocess.run([criu_bin, "check", "--feature", name], capture_output=True, timeout=60).returncode == 0


def test_features_agree_with_cli(client: CriuClient, criu_bin: str) -> None:
    ours = client.feature_check()
    assert set(ours) == {"mem_dirty_track", "lazy_pages", "pidfd_store"}
    assert ours["mem_dirty_track"] == _cli_feature(criu_bin, "mem_dirty_track")
    assert ours["pidfd_store"] == _cli_feature(criu_bin, "pidfd_store")
    # RPC lazy_pages is "uffd and non-cooperative uffd" (cr-service.c handle_feature_check)
    assert ours["lazy_pages"] == (_cli_feature(criu_bin, "uffd") and _cli_feature(criu_bin, "uffd-noncoop"))


def test_check_agrees_with_cli(client: CriuClient, criu_bin: str) -> None:
    cli_ok = subprocess.run([criu_bin, "check"], capture_output=True, timeout=60).returncode == 0
    try:
        client.check()
        ours = True
    except CriuError:
        ours = False
    assert ours == cli_ok


def test_report_for_doctor(criu_bin: str, client: CriuClient) -> None:
    report = criu_report(criu_bin)
    assert report["errors"] == []
    assert report["version"]["text"] == str(client.version())
    assert report["features"] == client.feature_check()
    assert report["check"]["ok"] is True
    json.dumps(report)


# --- dump and restore ----------------------------------------------------------------------------


def test_dump_and_restore_a_process_tree(client: CriuClient, trees: Trees, images) -> None:
    root = trees.start()
    before = sorted(set(children(root)))
    d = images("roundtrip")
    events: List[NotifyEvent] = []
    result = client.dump({"pid": root, "images_dir": d, "log_level": 4}, notify=events.append)
    assert result.log_path == os.path.join(d, "dump.log") and os.path.exists(result.log_path)
    seen = [e.script for e in events]
    assert seen[0] == "pre-dump" and seen[-1] == "post-dump", seen
    assert set(seen) <= DUMP_SCRIPTS
    # the tree is gone (leave_running defaults to false)
    trees.forget_dumped(root, d)
    assert not alive(root)
    assert root in image_pids(d) and set(before) & set(image_pids(d))

    info = check_dump_dir(d)
    stats = info["stats"]

    events.clear()
    restored = client.restore({"images_dir": d, "rst_sibling": True, "log_level": 4}, notify=events.append)
    trees.adopt(restored.pid)
    assert restored.pid == root  # CRIU restores the same pids
    seen = [e.script for e in events]
    assert in_order(seen, ["pre-restore", "post-restore"]), seen
    post_restore = [e for e in events if e.script == "post-restore"][0]
    assert post_restore.pid == restored.pid
    # it runs: not stopped, its loop forks, its long sleep is back
    assert running(restored.pid)
    assert os.getpid() == int(open(f"/proc/{restored.pid}/stat").read().rsplit(")", 1)[1].split()[1])
    assert keeps_forking(restored.pid)
    with open(f"/proc/{restored.pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[:2] == [b"sh", b"-c"]
    rstats = read_restore_stats(d)
    assert rstats.pages_restored == stats.pages_written
    theirs = crit_decode(os.path.join(d, "stats-restore"))
    if theirs is not None:
        assert theirs["entries"][0]["restore"] == rstats.__dict__


def test_leave_running_and_cli_dumps_decode_alike(client: CriuClient, criu_bin: str, trees: Trees, images) -> None:
    root = trees.start()
    rpc_dir, cli_dir, work = images("rpc"), images("cli"), images("work")
    client.dump({"pid": root, "images_dir": rpc_dir, "work_dir": work, "leave_running": True})
    assert running(root)
    assert keeps_forking(root)
    # stats and the log go to the work dir, images to the images dir
    assert os.path.exists(os.path.join(work, "stats-dump")) and os.path.exists(os.path.join(work, "dump.log"))
    assert not os.path.exists(os.path.join(rpc_dir, "stats-dump"))
    rpc = check_dump_dir(rpc_dir, work)

    out = subprocess.run(
        [criu_bin, "dump", "-t", str(root), "-D", cli_dir, "--leave-running", "--display-stats", "-o", "dump.log"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert alive(root)
    cli = check_dump_dir(cli_dir)

    # What the CLI printed is what our reader finds in its stats-dump.
    printed = dict(re.findall(r"^([A-Za-z ]+?):\s+(\d+)", out.stdout, re.M))
    names = {
        "Freezing time": "freezing_time",
        "Frozen time": "frozen_time",
        "Memory dump time": "memdump_time",
        "Memory write time": "memwrite_time",
        "IRMAP resolve time": "irmap_resolve",
        "Memory pages scanned": "pages_scanned",
        "Memory pages skipped from parent": "pages_skipped_parent",
        "Memory pages written": "pages_written",
        "Lazy memory pages": "pages_lazy",
    }
    assert set(names) <= set(printed), out.stdout
    for label, field in names.items():
        assert int(printed[label]) == getattr(cli["stats"], field), label

    # Same tree, same kinds of images, same inventory apart from the run id and uptime.
    def kinds(d: str) -> set:
        return {re.sub(r"-\d+", "-N", n) for n in os.listdir(d) if n.endswith(".img")}

    assert kinds(rpc_dir) == kinds(cli_dir)
    volatile = {"dump_criu_run_id", "dump_uptime"}
    assert {k: v for k, v in rpc["inventory"].items() if k not in volatile} == {
        k: v for k, v in cli["inventory"].items() if k not in volatile
    }
    # The root process's pagemaps describe the same mappings (a long-lived sh does not move)
    rpc_root = read_pagemap(os.path.join(rpc_dir, f"pagemap-{root}.img"))
    cli_root = read_pagemap(os.path.join(cli_dir, f"pagemap-{root}.img"))
    assert {e.vaddr for e in rpc_root.entries} & {e.vaddr for e in cli_root.entries}


@pytest.mark.parametrize("failing", ["pre-dump", "post-dump"])
def test_a_raising_callback_aborts_the_dump_and_the_tree_runs_on(
    client: CriuClient, trees: Trees, images, failing: str
) -> None:
    root = trees.start()
    long_sleep = long_sleeps(root)
    d = images("abort")
    seen: List[str] = []

    def callback(event: NotifyEvent) -> None:
        seen.append(event.script)
        if event.script == failing:
            raise RuntimeError(f"refusing {failing}")

    with pytest.raises(CriuNotifyError) as exc:
        client.dump({"pid": root, "images_dir": d, "leave_running": False}, notify=callback)
    assert exc.value.script == failing
    assert isinstance(exc.value.__cause__, RuntimeError)
    assert exc.value.log_path and any("script" in line for line in exc.value.log_errors)
    assert seen[-1] == failing
    # nothing was killed, nothing is stopped or left traced, the loop goes on
    assert len(long_sleep) == 1
    for pid in (root, *long_sleep):
        assert running(pid), pid
    with open(f"/proc/{root}/status") as f:
        assert re.search(r"^TracerPid:\s+0$", f.read(), re.M)
    assert keeps_forking(root)
    assert not parasite_left(root)
    assert not os.path.exists(os.path.join(d, "stats-dump"))
    # and CRIU can dump it again right away
    d2 = images("again")
    client.dump({"pid": root, "images_dir": d2, "leave_running": True})
    assert alive(root)


def test_dump_errors_are_typed(client: CriuClient, images) -> None:
    d = images("esrch")
    # a pid that cannot exist (above pid_max)
    with open("/proc/sys/kernel/pid_max") as f:
        pid = int(f.read()) + 1
    with pytest.raises(CriuError) as exc:
        client.dump({"pid": pid, "images_dir": d})
    assert exc.value.cr_errno == errno.ESRCH
    assert exc.value.log_path == os.path.join(d, "dump.log") and os.path.exists(exc.value.log_path)
    assert exc.value.log_errors and "RLIMIT_NOFILE" not in str(exc.value)


def test_pre_dump_guarded_by_dirty_tracking(client: CriuClient, trees: Trees, images) -> None:
    root = trees.start()
    d = images("pre")
    if not client.feature_check(["mem_dirty_track"])["mem_dirty_track"]:
        with pytest.raises(CriuUnsupportedError):
            client.pre_dump({"pid": root, "images_dir": d})
        assert alive(root) and not parasite_left(root)
        assert os.listdir(d) == []  # CRIU was not even started
        return
    # With soft-dirty tracking (e.g. AL2023): pre-dump, then a dump on top of it.
    client.pre_dump({"pid": root, "images_dir": d})
    d2 = images("final")
    client.dump({"pid": root, "images_dir": d2, "parent_img": os.path.relpath(d, d2), "track_mem": True})
    trees.forget_dumped(root, d2)
    stats = read_dump_stats(d2)
    assert stats.pages_skipped_parent > 0
    for _, pages, extents in iter_pagemaps(d2):
        assert sum(x.length for x in extents) == os.path.getsize(pages)


def test_namespace_notifications_in_order(client: CriuClient, trees: Trees, images) -> None:
    if not shutil.which("unshare"):
        pytest.skip("no unshare(1)")
    root = trees.start(prefix=("unshare", "--net", "setsid"))
    assert os.readlink(f"/proc/{root}/ns/net") != os.readlink("/proc/self/ns/net")
    d = images("netns")
    events: List[NotifyEvent] = []
    client.dump({"pid": root, "images_dir": d}, notify=events.append)
    dump_seen = [e.script for e in events]
    assert in_order(dump_seen, ["pre-dump", "network-lock", "post-dump"]), dump_seen
    # the unshare process is the Popen child; sh is its exec'd self
    trees.forget_dumped(root, d)

    events.clear()
    restored = client.restore({"images_dir": d, "rst_sibling": True}, notify=events.append)
    trees.adopt(restored.pid)
    seen = [e.script for e in events]
    expected = ["pre-restore", "setup-namespaces", "post-setup-namespaces", "post-restore", "network-unlock"]
    assert in_order(seen, expected), seen
    by_name = {e.script: e for e in events}
    assert by_name["setup-namespaces"].pid == restored.pid == by_name["post-restore"].pid
    assert os.readlink(f"/proc/{restored.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert keeps_forking(restored.pid)


def test_orphan_pts_master_fd_reaches_the_callback(client: CriuClient, trees: Trees, images) -> None:
    master, slave = os.openpty()
    try:
        script = 'sleep 1000 & while read l; do echo "got:$l"; done'
        root = trees.start(script, prefix=("setsid", "-c"), stdin=slave, stdout=slave, stderr=slave)
        d = images("pty")
        client.dump({"pid": root, "images_dir": d, "orphan_pts_master": True})
        trees.forget_dumped(root, d)
    finally:
        os.close(slave)
        os.close(master)  # (closing it earlier would hang up the job's session)
    # the job's terminal master is gone: on restore CRIU makes a new pty and hands us its master

    masters: List[int] = []

    def callback(event: NotifyEvent) -> None:
        if event.script == "orphan-pts-master":
            assert event.fd is not None
            masters.append(event.take_fd())

    restored = client.restore({"images_dir": d, "orphan_pts_master": True, "rst_sibling": True}, notify=callback)
    trees.adopt(restored.pid)
    assert len(masters) == 1
    fd = masters[0]
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") in ("/dev/ptmx", "/dev/pts/ptmx")
        os.write(fd, b"ping\n")
        got = b""
        deadline = time.monotonic() + 5
        while b"got:ping" not in got and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                got += os.read(fd, 1024)
        assert b"got:ping" in got, got
    finally:
        os.close(fd)


def _accepts(address: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(address)
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_service_mode(criu_bin: str, trees: Trees, images) -> None:
    tmp = tempfile.mkdtemp(prefix="mmbatch-criu-service-")
    address = os.path.join(tmp, "criu.sock")
    service = subprocess.Popen(
        [criu_bin, "service", "--address", address, "-o", os.path.join(tmp, "service.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # the socket file appears at bind(), before listen(): wait until it accepts
        assert wait_for(lambda: _accepts(address)), "criu service did not start"
        c = CriuClient(service_address=address, timeout=60)
        assert c.version().major >= 4
        assert c.feature_check() == CriuClient(criu_bin).feature_check()
        c.check()
        root = trees.start()
        d = images("service")
        events: List[str] = []
        c.dump({"pid": root, "images_dir": d}, notify=lambda e: events.append(e.script))
        assert events[0] == "pre-dump" and events[-1] == "post-dump"
        trees.forget_dumped(root, d)
        check_dump_dir(d)
        restored = c.restore({"images_dir": d})
        trees.adopt(restored.pid)
        assert restored.pid == root and keeps_forking(restored.pid)
    finally:
        service.terminate()
        try:
            service.wait(timeout=10)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
        # workers the service forked are its children: gone with it or reaped by us
        reap([p for p in children(os.getpid()) if p != service.pid and not alive(p)])
        shutil.rmtree(tmp, ignore_errors=True)
