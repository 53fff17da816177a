"""Process-tree helpers for the criu_bindings functional tests: start, inspect, kill and reap by PID."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from typing import Callable, Iterable, List, Sequence, Set


def alive(pid: int) -> bool:
    """Running (not a zombie, not gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X", "x")


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def children(pid: int) -> List[int]:
    out: List[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def long_sleeps(pid: int) -> List[int]:
    """Children of pid running `sleep 1000`."""
    return [c for c in children(pid) if cmdline(c) == b"sleep\x001000\x00"]


def tree(pid: int) -> List[int]:
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.append(p)
        todo.extend(children(p))
    return out


def reap(pids: Iterable[int], timeout: float = 10.0) -> None:
    """Wait until each pid is gone: waitpid our (adopted) children, poll /proc for the others."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
            except ChildProcessError:
                if not os.path.exists(f"/proc/{pid}"):
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"pid {pid} did not go away")
            time.sleep(0.01)


def kill_tree(pid: int) -> None:
    """SIGSTOP the root so it forks no more, then SIGKILL the whole tree by PID and reap it."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return
    pids = tree(pid)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reap(pids)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def image_pids(images_dir: str) -> List[int]:
    return sorted(int(m.group(1)) for n in os.listdir(images_dir) if (m := re.match(r"core-(\d+)\.img$", n)))


class Trees:
    """Process trees started by a test, and pids it restored; all killed (by PID) at teardown."""

    LOOP = "sleep 1000 & while :; do sleep 0.1; done"

    def __init__(self) -> None:
        self.roots: Set[int] = set()
        self.popens: List[subprocess.Popen] = []

    def start(self, script: str = LOOP, prefix: Sequence[str] = ("setsid",), **popen: object) -> int:
        kw: dict = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kw.update(popen)
        p = subprocess.Popen([*prefix, "sh", "-c", script], **kw)
        self.popens.append(p)
        self.roots.add(p.pid)
        # ready when the script runs: sh has its `sleep 1000` child, exec'd (a fresh fork still shows sh's argv)
        assert wait_for(lambda: bool(long_sleeps(p.pid))), "process tree did not start"
        return p.pid

    def adopt(self, pid: int) -> None:
        self.roots.add(pid)

    def forget_dumped(self, root: int, images_dir: str) -> None:
        """After a dump that killed the tree: reap it so its pids are free for a restore."""
        for p in self.popens:
            if p.pid == root:
                p.wait(timeout=10)
        reap(image_pids(images_dir))
        self.roots.discard(root)

    def cleanup(self) -> None:
        for root in sorted(self.roots):
            kill_tree(root)
        for p in self.popens:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
