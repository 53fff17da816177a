"""Two nodes on one machine, sharing only the checkpoint store: a job on node
A is interrupted (A's IMDS announces it), its final checkpoint lands, node A
goes away, and Batch's retry on node B continues from that checkpoint,
losing nothing but the work after the notice (here: none, it was frozen)."""

from __future__ import annotations

import os
import time

import pytest

from mmbatch import config as config_mod
from mmbatch.checkpointer import open_repository
from tests.integration.daemon import daemon_jobs as jobs

pytestmark = [pytest.mark.docker, pytest.mark.criu, pytest.mark.root, pytest.mark.slow]

# Prints "n pid" and appends n to its volume (open, write, close each time).
JOB = 'n=0; while :; do n=$((n+1)); echo "$n $$"; echo "$n" >> /data/out.log; sleep 0.1; done'


def volume_counts(path: str) -> list:
    with open(os.path.join(path, "out.log")) as f:
        return [int(x) for x in f.read().split()]


def test_job_moves_from_an_interrupted_node_to_another(node_factory, imds_factory, busybox_image, store_dir):
    imds_a, imds_b = imds_factory(), imds_factory()
    a = node_factory("a", images=[busybox_image], store=store_dir)
    b = node_factory("b", images=[busybox_image], store=store_dir)
    a.write_config(imds=imds_a.url, grace=600, poll=0.5)
    b.write_config(imds=imds_b.url, grace=600, poll=0.5)
    a.start_mmbatchd()
    b.start_mmbatchd()
    vol_a, vol_b = os.path.join(a.dir, "vol"), os.path.join(b.dir, "vol")
    os.makedirs(vol_a)
    os.makedirs(vol_b)
    job_id = jobs.unique("two-nodes")
    common = ("-e", "MMBATCH_CHECKPOINT_INTERVAL=10s")

    # attempt 1 on node A, with periodic checkpoints
    cid_a = jobs.run_job(a, "job", job_id, *common, "-v", f"{vol_a}:/data", image=busybox_image,
                         argv=("sh", "-c", JOB), attempt=1, network="host")
    jobs.wait_for(lambda: jobs.manifests(a, job_id), 20, "a periodic checkpoint on node A", interval=0.2, node=a)
    time.sleep(1.5)  # work after the periodic checkpoint, which the final one keeps

    # A's IMDS announces the interruption; the final checkpoint lands
    t_notice = time.time()
    imds_a.schedule_interruption(120)
    final = os.path.join(a.state_dir, cid_a, "final.json")
    jobs.wait_for(lambda: os.path.exists(final), 20, "the final checkpoint on node A", node=a)
    notice_to_final = time.time() - t_notice
    last_a = jobs.counter_lines(a.logs("job"))[-1]
    ms = jobs.manifests(a, job_id)
    assert ms[-1].labels["reason"] == "spot-final" and len(ms) >= 2
    assert ms[-1].created_at >= t_notice

    # the instance dies: A's container is killed, node A is gone
    a.docker("kill", "job", timeout=60)
    assert int(a.out("wait", "job", timeout=30)) == 137
    counts_a = volume_counts(vol_a)
    assert counts_a[-1] == last_a, "the job did nothing after its final checkpoint"
    pid_a = a.logs("job").splitlines()[-1].split()[1]
    a.stop()

    # attempt 2 of the same Batch job on node B continues from the final checkpoint
    t0 = time.time()
    cid_b = jobs.run_job(b, "job", job_id, *common, "-v", f"{vol_b}:/data", image=busybox_image,
                         argv=("sh", "-c", JOB), attempt=2, network="host")
    lines_b = jobs.wait_for(lambda: (lambda ls: ls if len(ls) >= 5 else None)(jobs.counter_lines(b.logs("job"))),
                            30, "the job's output on node B", node=b)
    assert lines_b[:5] == list(range(last_a + 1, last_a + 6)), (last_a, lines_b[:5])
    assert b.logs("job").splitlines()[0].split()[1] == pid_a, "the same process, restored"
    assert volume_counts(vol_b)[0] == last_a + 1, "its output on B's volume goes on from there"
    print(f"\nnotice -> final checkpoint on A {notice_to_final:.1f}s; B: `docker run` to 5 lines "
          f"{time.time() - t0:.1f}s; continued at {last_a + 1}", flush=True)

    repo = open_repository(config_mod.load(b.config), {"job_key": job_id})
    attempts = {r["container_id"]: r for r in repo.list_records("attempts")}
    assert attempts[cid_a]["end"] == "killed"
    assert attempts[cid_b]["restored_from"] == ms[-1].checkpoint_id
    restores = [e for e in repo.list_records("events") if e["kind"] == "restore"]
    assert [e["checkpoint_id"] for e in restores] == [ms[-1].checkpoint_id]
    # B's daemon checkpoints the restored job like any other (its interval counts from the restore)
    jobs.wait_for(lambda: any(m.container_id == cid_b for m in jobs.manifests(b, job_id)), 20,
                  "a periodic checkpoint of the restored job on node B", interval=0.2, node=b)
