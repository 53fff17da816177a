"""A Batch job killed mid-run continues where it was: twice, then succeeds."""

from __future__ import annotations

import os
import time

import pytest

from tests.integration import jobs
from tests.lib import docker as dk

pytestmark = [pytest.mark.docker, pytest.mark.criu]


def test_killed_job_continues_from_checkpoint(containers, busybox_image, tmp_path):
    vol = str(tmp_path / "vol")
    os.makedirs(vol)
    job_id = f"e2e-{os.urandom(4).hex()}"

    # attempt 1: runs, is checkpointed while paused, runs on, is killed
    a1 = jobs.start_counter(containers, busybox_image, job_id, 1, vol)
    jobs.wait_lines(a1, 10)
    last1, ck1 = jobs.paused_checkpoint(a1)
    time.sleep(1.0)  # work after the checkpoint: lost, and the volume log grows
    before_kill = jobs.lines_of(a1)[-1]
    assert before_kill[0] > last1[0] + 3
    jobs.kill(a1)

    # attempt 2: restored on create
    a2 = jobs.start_counter(containers, busybox_image, job_id, 2, vol)
    lines2 = jobs.wait_lines(a2, 5)
    assert lines2[0] == (last1[0] + 1, last1[1], last1[2]), (last1, lines2[:3])
    assert [n for n, _, _ in lines2] == list(range(last1[0] + 1, last1[0] + 1 + len(lines2)))
    # rootfs file and volume file agree with the job's own count
    count = int(dk.out("exec", a2, "cat", "/count"))
    assert count >= last1[0] + 1
    values = jobs.volume_counts(vol)
    jobs.assert_consecutive(values)  # truncated back to the checkpoint, then appended
    assert dk.out("exec", a2, "sh", "-c", "echo exec-works; exit 3", check=False) == "exec-works"
    assert dk.docker("exec", a2, "sh", "-c", "exit 3", check=False).returncode == 3
    st = dk.inspect(a2)["State"]
    assert st["Running"] and st["Pid"] > 0

    # the restored job is checkpointed again, stopped (docker stop: TERM is
    # ignored by the shell as PID 1, then KILL), and restored again
    last2, ck2 = jobs.paused_checkpoint(a2)
    assert ck2 != ck1
    time.sleep(0.5)
    t0 = time.monotonic()
    dk.docker("stop", "-t", "1", a2)
    assert time.monotonic() - t0 < 15
    assert dk.wait_exit(a2) == 137
    a3 = jobs.start_counter(containers, busybox_image, job_id, 3, vol)
    lines3 = jobs.wait_lines(a3, 3)
    assert lines3[0] == (last2[0] + 1, last1[1], last1[2]), (last2, lines3[:3])
    jobs.assert_consecutive(jobs.volume_counts(vol))

    # the job finishes on its own: exit 0 is reported and its checkpoints go
    repo = jobs.repo_for(job_id)
    assert len(repo.list()) >= 1
    open(os.path.join(vol, "stop"), "w").close()
    assert dk.wait_exit(a3, timeout=30) == 0
    deadline = time.time() + 30
    while time.time() < deadline and repo.list():
        time.sleep(0.2)
    assert repo.list() == [], "checkpoints of a job that succeeded must be deleted"
    attempts = {r["container_id"]: r for r in repo.list_records("attempts")}
    assert attempts[dk.container_id(a3)]["end"] == "succeeded"
    assert attempts[dk.container_id(a3)]["restored_from"] == ck2
    assert attempts[dk.container_id(a1)]["end"] == "killed"
    kinds = [e["kind"] for e in repo.list_records("events")]
    assert kinds.count("restore") == 2 and kinds.count("checkpoint") == 2
