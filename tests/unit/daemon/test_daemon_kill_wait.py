"""The runtime's `kill` during a Spot interruption: it holds SIGTERM/SIGKILL of
a managed container until mmbatchd's final-checkpoint marker (bounded), and
keeps a job mmbatchd froze frozen. Pure wait logic with a fake clock, then
the real shim against a fake delegate runtime (tests/unit/shim's harness)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from typing import List

import pytest

from mmbatch import node_info
from shim.commands.kill import signal_number
from tests.unit.shim.shim_harness import ShimHarness

CID = "c0ffee" * 10 + "abcd"


class FakeTime:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t
        self.slept: List[float] = []

    def clock(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def interrupt(state_dir: str, now: float, kill_wait: float = 100.0, deadline_in: float = 300.0) -> None:
    node_info.write_interruption(state_dir, {"action": "terminate", "time": now + 120, "deadline": now + deadline_in,
                                             "kill_wait_seconds": kill_wait})


def wait(state_dir: str, ft: FakeTime, cid: str = CID):
    return node_info.wait_for_final(state_dir, cid, clock=ft.clock, now=ft.clock, sleep=ft.sleep)


# -- the wait itself (fake clock) ---------------------------------------------------------

def test_no_wait_outside_an_interruption(tmp_path):
    ft = FakeTime()
    assert wait(str(tmp_path), ft) == (node_info.NOT_INTERRUPTED, 0.0)
    assert ft.slept == []


def test_waits_until_the_final_marker(tmp_path):
    sd = str(tmp_path)
    os.makedirs(os.path.join(sd, CID))
    ft = FakeTime()
    interrupt(sd, ft.t)
    real_sleep = ft.sleep

    def sleep(s: float) -> None:
        real_sleep(s)
        if ft.t >= 1012.0 and node_info.read_final(sd, CID) is None:
            node_info.write_final(sd, CID, {"status": "committed", "checkpoint_id": "x"})

    ft.sleep = sleep  # type: ignore[method-assign]
    outcome, waited = wait(sd, ft)
    assert outcome == node_info.COMMITTED
    assert 12.0 <= waited <= 12.5


def test_a_failed_final_checkpoint_ends_the_wait_too(tmp_path):
    sd = str(tmp_path)
    os.makedirs(os.path.join(sd, CID))
    ft = FakeTime()
    interrupt(sd, ft.t)
    node_info.write_final(sd, CID, {"status": "failed"})
    assert wait(sd, ft) == (node_info.FAILED, 0.0)


def test_wait_is_bounded_by_kill_wait_seconds(tmp_path):
    sd = str(tmp_path)
    ft = FakeTime()
    interrupt(sd, ft.t, kill_wait=100.0)
    outcome, waited = wait(sd, ft)
    assert outcome == node_info.TIMEOUT and waited == pytest.approx(100.0)
    assert max(ft.slept) <= 0.2 + 1e-9


def test_resumed_jobs_end_the_wait(tmp_path):
    sd = str(tmp_path)
    ft = FakeTime()
    interrupt(sd, ft.t)
    real_sleep = ft.sleep

    def sleep(s: float) -> None:
        real_sleep(s)
        if ft.t >= 1005.0:
            node_info.clear_interruption(sd)

    ft.sleep = sleep  # type: ignore[method-assign]
    outcome, waited = wait(sd, ft)
    assert outcome == node_info.RESUMED and 5.0 <= waited <= 5.3


def test_a_marker_past_its_deadline_is_stale(tmp_path):
    sd = str(tmp_path)
    ft = FakeTime()
    interrupt(sd, ft.t - 1000, deadline_in=900)  # its daemon died; the grace ran out long ago
    assert wait(sd, ft) == (node_info.NOT_INTERRUPTED, 0.0)


def test_signal_names():
    assert signal_number("9") == signal_number("KILL") == signal_number("sigkill") == 9
    assert signal_number("SIGTERM") == signal_number("TERM") == signal_number("15") == 15
    assert signal_number("SIGUSR1") == 10
    assert signal_number("NOPE") is None


# -- the real shim, fake delegate ----------------------------------------------------------

@pytest.fixture
def shim(tmp_path) -> ShimHarness:
    h = ShimHarness(str(tmp_path))
    d = os.path.join(h.state_dir, CID)
    os.makedirs(d, mode=0o700)
    with open(os.path.join(d, "state.json"), "w") as f:
        json.dump({"container_id": CID, "managed": True, "decision": "cold", "job": {"job_key": "j"},
                   "globals": {"root": h.root}, "runtime": h.fake}, f)
    return h


def g(shim: ShimHarness) -> List[str]:
    return ["--root", shim.root, "--log", os.path.join(shim.tmp, "log.json"), "--log-format", "json"]


def st(shim: ShimHarness) -> dict:
    with open(os.path.join(shim.state_dir, CID, "state.json")) as f:
        return json.load(f)


def later(delay: float, fn) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(delay), fn()), daemon=True)
    t.start()
    return t


def test_kill_outside_an_interruption_is_unchanged(shim):
    t0 = time.monotonic()
    res = shim.run(*g(shim), "kill", CID, "15")
    assert time.monotonic() - t0 < 2
    assert res.returncode == 0 and res.call["argv"][1:] == g(shim) + ["kill", CID, "15"]
    assert st(shim)["kill_signal"] == "15"


@pytest.mark.parametrize("sig", ["15", "SIGKILL"])
def test_stop_signal_waits_for_the_final_checkpoint(shim, sig):
    interrupt(shim.state_dir, time.time())
    later(0.8, lambda: node_info.write_final(shim.state_dir, CID, {"status": "committed"}))
    t0 = time.monotonic()
    res = shim.run(*g(shim), "kill", CID, sig)
    waited = time.monotonic() - t0
    assert 0.8 <= waited < 5, waited
    assert res.returncode == 0 and res.call["argv"][1:] == g(shim) + ["kill", CID, sig]
    assert st(shim)["killed_at"], "the kill is still recorded (the restore policy needs it)"
    log = open(os.path.join(shim.tmp, "log.json")).read()
    assert "final checkpoint committed" in log


def test_stop_signal_wait_is_bounded(shim):
    interrupt(shim.state_dir, time.time(), kill_wait=1.0)
    t0 = time.monotonic()
    res = shim.run(*g(shim), "kill", CID, "TERM")
    assert 1.0 <= time.monotonic() - t0 < 4
    assert res.call["argv"][1:] == g(shim) + ["kill", CID, "TERM"]


def test_other_signals_are_not_held(shim):
    interrupt(shim.state_dir, time.time())
    t0 = time.monotonic()
    res = shim.run(*g(shim), "kill", CID, "SIGUSR1")
    assert time.monotonic() - t0 < 2 and res.call["argv"][1:] == g(shim) + ["kill", CID, "SIGUSR1"]


def test_sigkill_of_a_frozen_job_thaws_it_after_the_kill(shim):
    interrupt(shim.state_dir, time.time())
    node_info.write_final(shim.state_dir, CID, {"status": "committed"})
    with open(os.path.join(shim.state_dir, CID, "state.json")) as f:
        data = json.load(f)
    data["frozen_by"] = "mmbatchd"
    with open(os.path.join(shim.state_dir, CID, "state.json"), "w") as f:
        json.dump(data, f)
    res = shim.run(*g(shim), "kill", CID, "9", exit_code=0)
    assert res.returncode == 0
    argvs = [c["argv"][1:] for c in res.calls]
    assert argvs[0] == g(shim) + ["kill", CID, "9"], "the kill first, argv unchanged"
    assert argvs[1][-2:] == ["resume", CID] and argvs[1][:2] == ["--root", shim.root], "then the thaw"
    assert st(shim)["frozen_by"] is None


def test_sigterm_to_all_of_a_frozen_job_does_not_thaw_it(shim):
    """runc's `kill --all` freezes, signals and THAWS the cgroup: for a job
    mmbatchd froze, the shim signals the processes itself."""
    victim = subprocess.Popen(["sleep", "60"])
    try:
        data = st(shim)
        data["frozen_by"] = "mmbatchd"
        with open(os.path.join(shim.state_dir, CID, "state.json"), "w") as f:
            json.dump(data, f)
        res = shim.run(*g(shim), "kill", "--all", CID, "15", stdout=json.dumps([victim.pid]))
        assert res.returncode == 0
        argvs = [c["argv"][1:] for c in res.calls]
        assert [a[-4:] for a in argvs] == [["ps", "--format", "json", CID]], argvs
        assert victim.wait(5) == -15
        assert st(shim)["frozen_by"] == "mmbatchd"
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
