"""mmbatchd checkpoints a running job on its interval, and a daemon restarted
in the middle of a job goes on with the same schedule: the manifests' times
show no duplicate and no lost checkpoint."""

from __future__ import annotations

import time

import pytest

from tests.integration.daemon import daemon_jobs as jobs

pytestmark = [pytest.mark.docker, pytest.mark.criu, pytest.mark.root, pytest.mark.slow]

INTERVAL = 10.0
JITTER = 0.1
# a gap between two manifests: the jittered interval, plus the freeze and dump
# of the later checkpoint (created_at is stamped after the dump)
MIN_GAP = INTERVAL * (1 - JITTER) - 0.05
MAX_GAP = INTERVAL * (1 + JITTER) + 2.0


def gaps(ms) -> list:
    return [round(b.created_at - a.created_at, 3) for a, b in zip(ms, ms[1:])]


def test_periodic_checkpoints_from_a_running_daemon(node_factory, imds_factory, busybox_image):
    imds = imds_factory()
    node = node_factory("sched", images=[busybox_image])
    node.write_config(imds=imds.url, jitter=JITTER)  # node default 15m; the job asks for 10s
    node.start_mmbatchd()
    job_id = jobs.unique("periodic")
    t0 = time.time()
    cid = jobs.run_job(node, "job", job_id, "-e", "MMBATCH_CHECKPOINT_INTERVAL=10s", "-e", "LIMIT=260",
                       image=busybox_image, argv=("sh", "-c", jobs.COUNTER))

    ms = jobs.wait_for(lambda: (lambda m: m if len(m) >= 2 else None)(jobs.manifests(node, job_id)),
                       2 * MAX_GAP + 5, "two periodic checkpoints", interval=0.2, node=node)
    first = ms[0].created_at - t0
    assert INTERVAL * (1 - JITTER) - 1 <= first <= MAX_GAP + 1, f"first checkpoint {first:.2f}s after start"
    assert all(MIN_GAP <= g <= MAX_GAP for g in gaps(ms)), gaps(ms)
    for m in ms:
        assert m.container_id == cid and m.labels["reason"] == "periodic"
        assert m.node["instance_id"] == imds.meta["instance-id"], "node.json from IMDS goes into manifests"
        assert m.node["lifecycle"] == "spot"
    kinds = [e["kind"] for e in node.events() if e.get("container_id") == cid]
    assert kinds.count("checkpoint") >= 2

    # The job ends on its own (exit 0): its checkpoints are deleted.
    assert int(node.out("wait", "job", timeout=60)) == 0
    jobs.wait_for(lambda: not jobs.manifests(node, job_id), 30, "checkpoints of the succeeded job to go",
                  node=node)


def test_daemon_restart_resumes_the_schedule(node_factory, imds_factory, busybox_image):
    imds = imds_factory()
    node = node_factory("restart", images=[busybox_image])
    node.write_config(imds=imds.url, interval="10s", jitter=JITTER)
    node.start_mmbatchd()
    job_id = jobs.unique("restart")
    jobs.run_job(node, "job", job_id, image=busybox_image, argv=("sh", "-c", jobs.COUNTER))

    ms = jobs.wait_for(lambda: jobs.manifests(node, job_id), MAX_GAP + 5, "the first checkpoint", interval=0.1,
                       node=node)
    # Restart the daemon between two checkpoints: down from ~2 s to ~5 s after
    # the first, well before the next is due (>= 9 s).
    time.sleep(max(0.0, ms[0].created_at + 2 - time.time()))
    assert node.stop_mmbatchd() == 0
    time.sleep(max(0.0, ms[0].created_at + 5 - time.time()))
    node.start_mmbatchd()
    ms = jobs.wait_for(lambda: (lambda m: m if len(m) >= 3 else None)(jobs.manifests(node, job_id)),
                       2 * MAX_GAP + 5, "two more checkpoints after the restart", interval=0.2, node=node)
    assert all(MIN_GAP <= g <= MAX_GAP for g in gaps(ms)), gaps(ms)
    log = node.daemon_log()
    assert "via reconcile" in log, "the restarted daemon found the running job by itself"
    # only one checkpoint per due time: nothing doubled around the restart
    assert len(ms) == len({round(m.created_at) for m in ms})
