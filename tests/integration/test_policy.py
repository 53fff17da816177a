"""Which containers are touched, and which attempts are restored."""

from __future__ import annotations

import json
import os
import time

import pytest

from mmbatch.checkpointer import checkpoint_container
from tests.integration import jobs
from tests.lib import docker as dk

pytestmark = [pytest.mark.docker, pytest.mark.criu]

LOOP = "while :; do sleep 0.2; done"


def _bundle_spec(cid: str) -> dict:
    path = f"/var/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby/{cid}/config.json"
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize("env", [[], ["-e", "MMBATCH_CHECKPOINT_MODE=none", "-e", "AWS_BATCH_JOB_ID=j-none"],
                                 ["-e", "MMC_CHECKPOINT_MODE=none", "-e", "AWS_BATCH_JOB_ID=j-none2"]],
                         ids=["no-job-id", "mode-none", "mmc-alias-none"])
def test_unmanaged_containers_are_never_touched(containers, busybox_image, env):
    name = containers.name("plain")
    containers.run("--runtime", jobs.RUNTIME, "--network", "none", *env, busybox_image, "sh", "-c", LOOP,
                   name=name)
    cid = dk.container_id(name)
    assert not os.path.exists(os.path.join(jobs.cfg().runtime.state_dir, cid))
    assert "org.criu.config" not in (_bundle_spec(cid).get("annotations") or {})


def test_managed_container_gets_state_and_criu_options(containers, busybox_image):
    name = containers.name("managed")
    containers.run("--runtime", jobs.RUNTIME, "--network", "none", "-e", "MMBATCH_JOB_KEY=outside-batch-1",
                   busybox_image, "sh", "-c", LOOP, name=name)
    cid = dk.container_id(name)
    state_dir = os.path.join(jobs.cfg().runtime.state_dir, cid)
    with open(os.path.join(state_dir, "state.json")) as f:
        st = json.load(f)
    assert st["managed"] and st["job"]["job_key"] == "outside-batch-1"
    conf = _bundle_spec(cid)["annotations"]["org.criu.config"]
    assert conf.startswith(state_dir)
    assert "tcp-close" in open(conf).read()
    dk.docker("rm", "-f", name)
    time.sleep(0.2)
    assert not os.path.exists(state_dir), "delete must clean the shim's state"


def _cold_after(containers, image, vol, job_id, extra=()):
    os.path.exists(os.path.join(vol, "stop")) and os.unlink(os.path.join(vol, "stop"))
    a2 = jobs.start_counter(containers, image, job_id, 2, vol, extra=extra)
    first = jobs.wait_lines(a2, 2)[0]
    return a2, first


def test_job_that_failed_on_its_own_is_retried_cold(containers, busybox_image, tmp_path):
    vol, job_id = str(tmp_path), f"pol-exit1-{os.urandom(4).hex()}"
    a1 = jobs.start_counter(containers, busybox_image, job_id, 1, vol, extra=("-e", "EXIT=1"))
    jobs.wait_lines(a1, 5)
    jobs.paused_checkpoint(a1)
    open(os.path.join(vol, "stop"), "w").close()
    assert dk.wait_exit(a1) == 1
    _a2, first = _cold_after(containers, busybox_image, vol, job_id)
    assert first[0] == 1, "a job that failed on its own must not be restored"
    colds = [e for e in jobs.repo_for(job_id).list_records("events") if e["kind"] == "cold-start"]
    assert any("ended on its own" in e["reason"] for e in colds), colds


OOM_JOB = (
    "n=0; while [ ! -e /data/oom ]; do n=$((n+1)); echo \"$n $$ x\"; sleep 0.1; done; "
    "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo survived"
)


def test_oom_killed_job_is_retried_cold(containers, busybox_image, tmp_path):
    vol, job_id = str(tmp_path), f"pol-oom-{os.urandom(4).hex()}"
    common = ("--runtime", jobs.RUNTIME, "--network", "none", "-e", f"AWS_BATCH_JOB_ID={job_id}", "-v",
              f"{vol}:/data", "--memory", "64m", "--memory-swap", "64m")
    a1 = containers.name("oom")
    containers.run(*common, "-e", "AWS_BATCH_JOB_ATTEMPT=1", busybox_image, "sh", "-c", OOM_JOB, name=a1)
    jobs.wait_lines(a1, 5)
    c = jobs.cfg()
    checkpoint_container(dk.container_id(a1), c, c.runtime.state_dir, reason="test")
    open(os.path.join(vol, "oom"), "w").close()
    assert dk.wait_exit(a1) == 137
    assert dk.inspect(a1)["State"]["OOMKilled"] is True
    os.unlink(os.path.join(vol, "oom"))
    a2 = containers.name("oom")
    containers.run(*common, "-e", "AWS_BATCH_JOB_ATTEMPT=2", busybox_image, "sh", "-c", OOM_JOB, name=a2)
    first = jobs.wait_lines(a2, 2)[0]
    assert first[0] == 1, "an OOM-killed job must not be restored"
    record = jobs.repo_for(job_id).get_record("attempts", dk.container_id(a1))
    assert record["end"] == "oom"


def test_diagnosis_mode_keeps_checkpoints_after_success(containers, busybox_image, tmp_path):
    vol, job_id = str(tmp_path), f"pol-diag-{os.urandom(4).hex()}"
    a1 = jobs.start_counter(containers, busybox_image, job_id, 1, vol,
                            extra=("-e", "MMBATCH_CHECKPOINT_DIAGNOSIS=true"))
    jobs.wait_lines(a1, 3)
    jobs.paused_checkpoint(a1)
    open(os.path.join(vol, "stop"), "w").close()
    assert dk.wait_exit(a1) == 0
    repo = jobs.repo_for(job_id)
    deadline = time.time() + 30
    while time.time() < deadline and not any(e["kind"] == "job-exit" for e in repo.list_records("events")):
        time.sleep(0.2)
    exits = [e for e in repo.list_records("events") if e["kind"] == "job-exit"]
    assert exits and exits[0]["exit_code"] == 0 and exits[0]["checkpoints_removed"] is False
    assert len(repo.list()) == 1


HOSTILE_IDS = [
    "../../../../tmp/mmbatch-evil",
    "/etc/passwd",
    "a/../../b",
    "x" * 3000,
    "ünïcødé-ジョブ/..",
    "; rm -rf / #",
    "..",
]


@pytest.mark.parametrize("job_id", HOSTILE_IDS, ids=range(len(HOSTILE_IDS)))
def test_hostile_job_ids_stay_inside_the_store(containers, busybox_image, tmp_path, job_id):
    c = jobs.cfg()
    root = c.store.url[len("file://"):]
    before = set(jobs.store_files("/tmp")) if os.path.isdir("/tmp/mmbatch-evil") else set()
    name = containers.name("hostile")
    containers.run("--runtime", jobs.RUNTIME, "--network", "none", "-e", f"AWS_BATCH_JOB_ID={job_id}",
                   busybox_image, "sh", "-c", LOOP, name=name)
    cid = dk.container_id(name)
    result = checkpoint_container(cid, c, c.runtime.state_dir, reason="test")
    key = result.job_key
    assert "/" not in key and key not in (".", "..") and len(key) <= 200
    job_dir = os.path.realpath(os.path.join(root, "jobs", key))
    assert job_dir.startswith(os.path.realpath(root) + "/")
    assert jobs.store_files(job_dir), "nothing was written for the job"
    assert not os.path.exists("/tmp/mmbatch-evil") or set(jobs.store_files("/tmp")) == before
    jobs.repo_for(job_id).delete_all()
