"""Every way a restore or checkpoint can go wrong ends in a running job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from mmbatch.checkpointer import checkpoint_container
from mmbatch.errors import CheckpointError
from mmbatch.manifest import Manifest, new_checkpoint_id
from tests.integration import jobs
from tests.lib import docker as dk

pytestmark = [pytest.mark.docker, pytest.mark.criu]


def _events(job_id: str, kind: str):
    return [e for e in jobs.repo_for(job_id).list_records("events") if e["kind"] == kind]


def _corrupt_object(repo, rel: str) -> None:
    path = os.path.join(repo.store.root, repo.prefix, rel)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\xde\xad\xbe\xef" * 4)


def _start_killed_job(containers, image, vol, job_id):
    a1 = jobs.start_counter(containers, image, job_id, 1, vol)
    jobs.wait_lines(a1, 5)
    return a1


def test_corrupt_chunk_falls_back_to_previous_checkpoint(containers, busybox_image, tmp_path):
    vol, job_id = str(tmp_path), f"fb-prev-{os.urandom(4).hex()}"
    a1 = _start_killed_job(containers, busybox_image, vol, job_id)
    last_a, ck_a = jobs.paused_checkpoint(a1)
    time.sleep(0.5)
    last_b, ck_b = jobs.paused_checkpoint(a1)
    assert last_b[0] > last_a[0]
    jobs.kill(a1)
    repo = jobs.repo_for(job_id)
    newest, older = repo.get(ck_b), repo.get(ck_a)
    only_newest = sorted(newest.chunk_objects() - older.chunk_objects())
    assert only_newest, "the newest checkpoint shares every object with the older one"
    _corrupt_object(repo, only_newest[0])

    a2 = jobs.start_counter(containers, busybox_image, job_id, 2, vol)
    first = jobs.wait_lines(a2, 2)[0]
    assert first == (last_a[0] + 1, last_a[1], last_a[2]), "did not restore the previous checkpoint"
    fallbacks = _events(job_id, "restore-fallback")
    assert any(e["checkpoint_id"] == ck_b and "does not match its sha256" in e["reason"] for e in fallbacks), \
        fallbacks


def test_only_checkpoint_corrupt_means_cold_start(containers, busybox_image, tmp_path):
    vol, job_id = str(tmp_path), f"fb-cold-{os.urandom(4).hex()}"
    a1 = _start_killed_job(containers, busybox_image, vol, job_id)
    last, ck = jobs.paused_checkpoint(a1)
    jobs.kill(a1)
    repo = jobs.repo_for(job_id)
    for rel in repo.get(ck).chunk_objects():
        _corrupt_object(repo, rel)
    a2 = jobs.start_counter(containers, busybox_image, job_id, 2, vol)
    first = jobs.wait_lines(a2, 2)[0]
    assert first[0] == 1 and first[2] != last[2], "expected a cold start"
    assert _events(job_id, "restore-fallback")


def test_different_image_means_cold_start(containers, busybox_image, tmp_path):
    vol, job_id = str(tmp_path), f"fb-img-{os.urandom(4).hex()}"
    other_image = "mmbatch-test/busybox-other:1"
    if not dk.image_exists(other_image):
        helper = containers.name("img")
        dk.docker("run", "--name", helper, "--network", "none", busybox_image, "sh", "-c", "echo v2 > /version")
        dk.docker("commit", helper, other_image)
    a1 = _start_killed_job(containers, busybox_image, vol, job_id)
    jobs.paused_checkpoint(a1)
    jobs.kill(a1)
    a2 = jobs.start_counter(containers, other_image, job_id, 2, vol)
    assert jobs.wait_lines(a2, 2)[0][0] == 1
    assert any("image differs" in e["reason"] for e in _events(job_id, "restore-fallback"))


def test_criu_restore_failure_means_cold_start_and_a_clean_rootfs(containers, busybox_image, tmp_path):
    vol, job_id = str(tmp_path), f"fb-criu-{os.urandom(4).hex()}"
    a1 = _start_killed_job(containers, busybox_image, vol, job_id)
    dk.docker("exec", a1, "sh", "-c", "echo from-attempt-1 > /only-in-diff")
    _last, ck = jobs.paused_checkpoint(a1)
    jobs.kill(a1)
    # A checkpoint whose checksums are right but whose CRIU image is broken.
    repo = jobs.repo_for(job_id)
    good = repo.get(ck)
    src = tmp_path / "ck"
    repo.fetch(good, str(src))
    core = next(p for p in (src / "criu").iterdir() if p.name.startswith("core-"))
    core.write_bytes(core.read_bytes()[:12])
    template = Manifest(checkpoint_id=new_checkpoint_id(), job_key=good.job_key, container_id=good.container_id,
                        created_at=time.time(), attempt=good.attempt, node=good.node, compat=good.compat,
                        open_files=good.open_files, labels={"reason": "test-broken"})
    broken = repo.commit(str(src), template)
    repo.store.delete(f"{repo.prefix}/manifests/{ck}.json")  # only the broken one is left

    a2 = jobs.start_counter(containers, busybox_image, job_id, 2, vol)
    assert jobs.wait_lines(a2, 2)[0][0] == 1, "expected a cold start"
    assert (repo.get_record("restores", broken.checkpoint_id) or {}).get("failures") == 1
    assert dk.docker("exec", a2, "test", "-e", "/only-in-diff", check=False).returncode == 1, \
        "the failed restore's rootfs changes were not reverted"


def test_checkpoint_failing_three_times_is_skipped(containers, busybox_image, tmp_path):
    vol, job_id = str(tmp_path), f"fb-3x-{os.urandom(4).hex()}"
    a1 = _start_killed_job(containers, busybox_image, vol, job_id)
    _last, ck = jobs.paused_checkpoint(a1)
    jobs.kill(a1)
    jobs.repo_for(job_id).put_record("restores", ck, {"failures": 3})
    a2 = jobs.start_counter(containers, busybox_image, job_id, 2, vol)
    assert jobs.wait_lines(a2, 2)[0][0] == 1
    assert any("3 times" in e["reason"] for e in _events(job_id, "restore-fallback"))


def _runtime_status(name: str) -> str:
    st = dk.inspect(name)
    from mmbatch.runc import Runc

    runtime = st.get("HostConfig", {}).get("Runtime")
    assert runtime == jobs.RUNTIME
    return (Runc("runc", ["--root", "/var/run/docker/runtime-runc/moby"]).state(st["Id"]) or {}).get("status", "")


def test_store_full_during_checkpoint_keeps_job_running_and_old_checkpoint(containers, busybox_image, tmp_path,
                                                                           needs_root):
    vol, job_id = str(tmp_path), f"fb-full-{os.urandom(4).hex()}"
    a1 = _start_killed_job(containers, busybox_image, vol, job_id)
    repo = jobs.repo_for(job_id)
    job_dir = os.path.join(repo.store.root, repo.prefix)
    os.makedirs(job_dir, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", job_dir], check=True)
    try:
        c = jobs.cfg()
        cid = dk.container_id(a1)
        first = checkpoint_container(cid, c, c.runtime.state_dir, reason="test")
        st = os.statvfs(job_dir)
        with open(os.path.join(job_dir, "filler"), "wb") as f:
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 16 * 1024))
        with pytest.raises(CheckpointError) as err:
            checkpoint_container(cid, c, c.runtime.state_dir, reason="test")
        assert "full" in str(err.value).lower() or "space" in str(err.value).lower(), str(err.value)
        assert _runtime_status(a1) == "running"
        n0 = jobs.lines_of(a1)[-1][0]
        time.sleep(0.5)
        assert jobs.lines_of(a1)[-1][0] > n0, "the job stopped counting"
        assert [m.checkpoint_id for m in repo.list()] == [first.checkpoint_id]
        assert repo.latest().checkpoint_id == first.checkpoint_id
        repo.fetch(repo.latest(), str(tmp_path / "verify"))  # intact
        os.unlink(os.path.join(job_dir, "filler"))
        again = checkpoint_container(cid, c, c.runtime.state_dir, reason="test")
        assert repo.latest().checkpoint_id == again.checkpoint_id
    finally:
        subprocess.run(["umount", "-l", job_dir], check=False)


@pytest.mark.parametrize("point", ["before-freeze", "frozen", "dumped", "captured", "before-upload"])
def test_checkpointer_killed_at_each_step(containers, busybox_image, tmp_path, point):
    vol, job_id = str(tmp_path), f"fb-kill-{os.urandom(4).hex()}"
    a1 = _start_killed_job(containers, busybox_image, vol, job_id)
    cid = dk.container_id(a1)
    c = jobs.cfg()
    good = checkpoint_container(cid, c, c.runtime.state_dir, reason="test")
    marker = tmp_path / "marker"
    env = dict(os.environ, MMBATCH_FAULT=f"{point}:sleep", MMBATCH_FAULT_MARKER=str(marker),
               PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "mmbatch.cli", "checkpoint", cid], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and not marker.exists():
            time.sleep(0.05)
        assert marker.exists(), f"checkpointer never reached {point}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and _runtime_status(a1) != "running":
        time.sleep(0.1)
    assert _runtime_status(a1) == "running", f"job left {_runtime_status(a1)} after a kill at {point}"
    n0 = jobs.lines_of(a1)[-1][0]
    time.sleep(0.5)
    assert jobs.lines_of(a1)[-1][0] > n0
    repo = jobs.repo_for(job_id)
    assert [m.checkpoint_id for m in repo.list()] == [good.checkpoint_id], "a half checkpoint is visible"
    # the lock died with the process: the next checkpoint works
    checkpoint_container(cid, c, c.runtime.state_dir, reason="test")
