"""mmbatchd without docker: how it finds managed containers (reconcile, hook
datagrams, engine events), resumes their schedules from the store, hands
exit codes to the finalizer once, and picks an interruption up again after
a restart. A real file store, a fake engine, no root."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import threading
import time
from typing import Any, Dict, List

import pytest

from hooks.notify import notify
from mmbatch import config as config_mod
from mmbatch import node_info
from mmbatch.checkpointer import open_repository
from mmbatch.daemon import Daemon
from mmbatch.errors import ConfigError, MmbatchError
from mmbatch.manifest import Manifest
from mmbatch.scheduler import spread
from tests.lib.fake_engine import FakeEngine


@pytest.fixture
def world(tmp_path, monkeypatch):
    short = tempfile.mkdtemp(prefix="mmbt-u-", dir="/tmp")  # unix socket paths must stay short
    monkeypatch.setenv("MMBATCH_LOG_DIR", str(tmp_path / "log"))
    monkeypatch.delenv("MMBATCH_HOOK_SOCKET", raising=False)
    cfg = config_mod.from_dict({
        "runtime": {"state_dir": str(tmp_path / "state")},
        "checkpoint": {"interval": "60s", "staging_dir": str(tmp_path / "staging"), "jitter": 0.1},
        "store": {"url": f"file://{tmp_path / 'store'}"},
        "api": {"hook_socket": os.path.join(short, "hook.sock")},
        "spot": {"grace_seconds": 30},
    })
    os.makedirs(cfg.runtime.state_dir)
    engine = FakeEngine()
    daemons: List[Daemon] = []

    def make() -> Daemon:
        d = Daemon(cfg, engine=engine)
        daemons.append(d)
        return d

    yield cfg, engine, make
    for d in daemons:
        d.stop_event.set()
        if d._sock is not None:
            d._sock.close()
    shutil.rmtree(short, ignore_errors=True)


def cid_of(n: int) -> str:
    return f"{n:02d}" * 32


def write_state(cfg, cid: str, job_key: str, **extra) -> Dict[str, Any]:
    st = {"container_id": cid, "managed": True, "decision": "cold", "created_at": time.time() - 500,
          "job": {"job_key": job_key, "interval": 60.0, "mode": "iterative"}, "runtime": "runc",
          "globals": {"root": "/nonexistent"}}
    st.update(extra)
    d = os.path.join(cfg.runtime.state_dir, cid)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "state.json"), "w") as f:
        json.dump(st, f)
    return st


def commit_checkpoint(cfg, tmp_path, job_key: str, created_at: float) -> Manifest:
    src = tmp_path / f"ck-{created_at}"
    (src / "criu").mkdir(parents=True)
    (src / "criu" / "pages-1.img").write_bytes(os.urandom(8192))
    repo = open_repository(cfg, {"job_key": job_key})
    return repo.commit(str(src), Manifest(job_key=job_key, container_id="x" * 64, created_at=created_at))


def test_reconcile_resumes_each_schedule_from_its_last_checkpoint(world, tmp_path):
    cfg, engine, make = world
    a, b = cid_of(1), cid_of(2)
    write_state(cfg, a, "job-a")
    write_state(cfg, b, "job-b")
    engine.running = [a, b]
    m = commit_checkpoint(cfg, tmp_path, "job-a", time.time() - 20)

    d = make()
    d.reconcile()
    ja, jb = d.scheduler.get(a), d.scheduler.get(b)
    assert ja.base == m.created_at, "job-a counts from its last committed checkpoint"
    assert ja.next_due == pytest.approx(m.created_at + 60 * spread(a, m.created_at, 0.1))
    assert jb.base == pytest.approx(time.time() - 500, abs=5), "job-b has none: from its start"
    assert jb.next_due <= time.time(), "and is overdue: it goes first"

    again = make()  # a second restart computes the very same times
    again.reconcile()
    assert again.scheduler.get(a).next_due == ja.next_due


def test_a_restored_job_counts_from_its_restore(world, tmp_path):
    cfg, engine, make = world
    c = cid_of(3)
    restored_at = time.time() - 5
    write_state(cfg, c, "job-r", decision="restored", restored_at=restored_at)
    commit_checkpoint(cfg, tmp_path, "job-r", time.time() - 400)  # where it was restored from
    engine.running = [c]
    d = make()
    d.reconcile()
    assert d.scheduler.get(c).base == restored_at


def test_reconcile_skips_what_is_not_a_running_managed_job(world):
    cfg, engine, make = world
    gone, pending, unmanaged = cid_of(4), cid_of(5), cid_of(6)
    write_state(cfg, gone, "j-gone")
    write_state(cfg, pending, "j-pending", decision="pending")
    write_state(cfg, unmanaged, "j-un", managed=False)
    engine.running = [pending, unmanaged]
    for name in ("interrupted", "node.json", "hook.sock", "..x"):
        open(os.path.join(cfg.runtime.state_dir, name), "w").close()
    d = make()
    d.reconcile()
    assert len(d.scheduler) == 0 and d.containers == {}


def test_hook_datagrams_start_and_stop_watching(world):
    cfg, engine, make = world
    c = cid_of(7)
    write_state(cfg, c, "job-h", created_at=time.time())
    d = make()
    d.open_hook_socket()
    assert stat.S_IMODE(os.stat(d.hook_socket).st_mode) == 0o600
    threading.Thread(target=d._hook_listener, daemon=True).start()

    assert notify({"event": "poststart", "container_id": c, "pid": 1}, d.hook_socket)
    notify({"event": "poststart", "container_id": "../../etc"}, d.hook_socket)  # ignored
    deadline = time.time() + 5
    while c not in d.scheduler and time.time() < deadline:
        d.step(0.1)
    job = d.scheduler.get(c)
    assert job is not None and 54 <= job.next_due - job.base <= 66
    assert len(d.scheduler) == 1

    notify({"event": "poststop", "container_id": c}, d.hook_socket)
    deadline = time.time() + 5
    while c in d.scheduler and time.time() < deadline:
        d.step(0.1)
    assert c not in d.scheduler and d.containers[c].stopped_at is not None

    notify({"event": "restored", "container_id": c, "job_key": "job-h"}, d.hook_socket)  # the runtime's
    deadline = time.time() + 5
    while c not in d.scheduler and time.time() < deadline:
        d.step(0.1)
    assert c in d.scheduler


def test_only_one_daemon_per_hook_socket(world):
    cfg, engine, make = world
    make().open_hook_socket()
    with pytest.raises(MmbatchError, match="another mmbatchd"):
        make().open_hook_socket()


def test_a_stale_hook_socket_is_replaced(world):
    cfg, engine, make = world
    first = make()
    first.open_hook_socket()
    first._sock.close()  # died without cleaning up
    second = make()
    second.open_hook_socket()
    assert notify({"event": "poststop", "container_id": cid_of(1)}, second.hook_socket)


def die_event(cid: str, code: str) -> Dict[str, Any]:
    return {"Type": "container", "Action": "die", "Actor": {"ID": cid, "Attributes": {"exitCode": code}},
            "timeNano": time.time_ns()}


@pytest.mark.parametrize("already", [False, True])
def test_die_event_finalizes_once(world, monkeypatch, already):
    cfg, engine, make = world
    c = cid_of(8)
    st = write_state(cfg, c, "job-d", created_at=time.time())
    calls = []
    import mmbatch.finalize

    monkeypatch.setattr(mmbatch.finalize, "finalize", lambda *a, **kw: calls.append((a, kw)))
    if already:  # the runtime's detached finalizer was first
        open_repository(cfg, st["job"]).put_record("attempts", c, {"container_id": c, "exit_code": 0})
    d = make()
    d.finalize_delay = 0
    d.handle(("engine", {"Action": "start", "Actor": {"ID": c}}))
    assert c in d.scheduler
    d.handle(("engine", die_event(c, "0")))
    assert c not in d.scheduler
    deadline = time.time() + 5
    while not calls and time.time() < deadline and not already:
        time.sleep(0.05)
    time.sleep(0.2)
    if already:
        assert calls == []
    else:
        [(args, kw)] = calls
        assert args[0] == c and args[1]["job"]["job_key"] == "job-d" and kw["exit_code"] == 0


def test_restart_during_an_interruption_carries_on(world, monkeypatch):
    cfg, engine, make = world
    done, todo = cid_of(9), cid_of(10)
    write_state(cfg, done, "job-f1", frozen_by="mmbatchd")
    write_state(cfg, todo, "job-f2")
    engine.running = [done, todo]
    now = time.time()
    node_info.write_interruption(cfg.runtime.state_dir, {"action": "terminate", "time": now + 60,
                                                         "time_text": "x", "deadline": now + 90,
                                                         "kill_wait_seconds": 100})
    node_info.write_final(cfg.runtime.state_dir, done, {"status": "committed"})
    started: List[str] = []
    d = make()
    monkeypatch.setattr(d, "_start_final", started.append)
    monkeypatch.setattr(d, "_spot_watcher", lambda: None)
    d.start(spot=False, engine_events=False)
    assert d.interruption is not None and d.scheduler.held
    assert started == [todo], "only the job without a final checkpoint gets one"
    assert d.containers[done].frozen and d.containers[done].final_status == "committed"


def test_a_stale_interruption_marker_is_dropped_at_start(world, monkeypatch):
    cfg, engine, make = world
    c = cid_of(11)
    write_state(cfg, c, "job-s", frozen_by="mmbatchd")
    engine.running = [c]
    node_info.write_interruption(cfg.runtime.state_dir, {"deadline": time.time() - 10})
    node_info.write_final(cfg.runtime.state_dir, c, {"status": "committed"})
    thawed: List[str] = []
    d = make()
    monkeypatch.setattr(d, "_thaw", lambda cont, why: thawed.append(cont.container_id))
    d.start(spot=False, engine_events=False)
    assert d.interruption is None and not d.scheduler.held
    assert not os.path.exists(node_info.interruption_path(cfg.runtime.state_dir))
    assert node_info.read_final(cfg.runtime.state_dir, c) is None
    assert thawed == [c], "a job left frozen by an interruption that is over runs again"


def test_config_keys_of_the_daemon():
    cfg = config_mod.loads(config_mod.DEFAULT_TOML)
    assert (cfg.checkpoint.parallel, cfg.checkpoint.bandwidth_mbps, cfg.checkpoint.jitter) == (2, 0, 0.1)
    assert (cfg.spot.grace_seconds, cfg.spot.kill_wait_seconds, cfg.spot.final_parallel) == (60, 100, 0)
    assert cfg.api.hook_socket == "/run/mmbatch/hook.sock"
    assert config_mod.from_dict({"spot": {"kill_wait_seconds": "90s"}}).spot.kill_wait_seconds == 90
    for section, key, value in [("checkpoint", "parallel", 0), ("checkpoint", "jitter", 0.7),
                                ("checkpoint", "bandwidth_mbps", -1), ("spot", "kill_wait_seconds", "20m"),
                                ("spot", "final_parallel", -1), ("api", "hook_socket", "rel/hook.sock"),
                                ("checkpoint", "retry_seconds", "0s")]:
        with pytest.raises(ConfigError, match=f"{section}.{key}"):
            config_mod.from_dict({section: {key: value}})


def test_rebalance_recommendation_brings_every_checkpoint_forward(world):
    from mmbatch.spot import RebalanceNotice

    cfg, engine, make = world
    a, b = cid_of(12), cid_of(13)
    for c in (a, b):
        write_state(cfg, c, f"job-{c[:4]}", created_at=time.time())
    engine.running = [a, b]
    d = make()
    d.reconcile()
    now = time.time()
    assert all(d.scheduler.get(c).next_due > now + 30 for c in (a, b))
    d.handle(("rebalance", RebalanceNotice(now, "2026-11-27T12:00:00Z")))
    for c in (a, b):
        job = d.scheduler.get(c)
        assert job.reason == "rebalance" and job.next_due <= time.time()
    kinds = [json.loads(x)["kind"] for x in open(os.path.join(os.environ["MMBATCH_LOG_DIR"], "events.log"))]
    assert kinds == ["rebalance-recommendation"]
