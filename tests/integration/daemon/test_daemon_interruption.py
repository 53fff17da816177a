"""Spot interruptions through the fake IMDS: final checkpoints of every job,
in parallel, well inside the two minutes; each job frozen after its final
checkpoint; stop signals held until it is committed; and a notice that never
turns into a termination: the jobs resume and finish normally."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from tests.integration.daemon import daemon_jobs as jobs

pytestmark = [pytest.mark.docker, pytest.mark.criu, pytest.mark.root, pytest.mark.slow]


def final_marker(node, cid):
    try:
        with open(os.path.join(node.state_dir, cid, "final.json")) as f:
            return json.load(f), os.stat(f.name).st_mtime
    except (OSError, ValueError):
        return None


def test_interruption_saves_five_512mib_jobs_within_100s(node_factory, imds_factory, python_image):
    n_jobs, mib = 5, 512
    imds = imds_factory()
    node = node_factory("spot5", images=[python_image])
    node.write_config(imds=imds.url, grace=600, poll=0.5)  # interval 15m: no periodic checkpoint here
    node.start_mmbatchd()
    names = [f"big{i}" for i in range(n_jobs)]
    job_ids = [jobs.unique(f"big{i}") for i in range(n_jobs)]
    cids = [jobs.run_job(node, name, job_id, "-e", f"MIB={mib}", image=python_image,
                         argv=("python3", "-u", "-c", jobs.BIG_PYTHON)) for name, job_id in zip(names, job_ids)]
    jobs.wait_for(lambda: all("ready" in node.logs(n) for n in names), 90, "the jobs to fill their memory",
                  interval=0.5, node=node)
    jobs.wait_for(lambda: all(len(jobs.counter_lines(node.logs(n))) >= 3 for n in names), 30, "the jobs to count")

    t_notice = time.time()
    imds.schedule_interruption(120)
    jobs.wait_for(lambda: os.path.exists(os.path.join(node.state_dir, "interrupted")), 5, "the notice", node=node)

    # The engine stops the last job right away (as ECS would): the runtime
    # holds the signal until that job's final checkpoint is committed.
    stopped = {}

    def stop_last() -> None:
        t = time.time()
        node.docker("stop", "-t", "2", names[-1], timeout=150)
        stopped.update(started=t, returned=time.time())

    stopper = threading.Thread(target=stop_last)
    stopper.start()

    finals = jobs.wait_for(lambda: (lambda fs: fs if all(fs) else None)([final_marker(node, c) for c in cids]),
                           100 - (time.time() - t_notice), "all final checkpoints", interval=0.2, node=node)
    fan_out = max(mtime for _, mtime in finals) - t_notice
    stopper.join(60)
    print(f"\nfinal checkpoints of {n_jobs} x {mib} MiB committed {fan_out:.1f}s after the notice; "
          f"per job {[round(f['seconds'], 1) for f, _ in finals]} s", flush=True)
    assert fan_out < 100
    assert all(f["status"] == "committed" for f, _ in finals), finals

    # Every job froze at the notice and stays frozen after its final checkpoint.
    for name, cid in zip(names[:-1], cids[:-1]):
        assert node.runtime_status(cid) == "paused", name
    before = [node.logs(n) for n in names[:-1]]
    time.sleep(1.0)
    assert [node.logs(n) for n in names[:-1]] == before, "a frozen job printed something"

    # The stopped one: its stop waited for its final checkpoint, then killed it.
    assert stopped and stopped["returned"] >= finals[-1][1], (stopped, finals[-1])
    assert node.container_state(names[-1])["ExitCode"] == 137

    for job_id, cid in zip(job_ids, cids):
        [m] = jobs.manifests(node, job_id)
        assert m.labels["reason"] == "spot-final" and m.container_id == cid
        assert m.total_size >= mib << 20
        print(f"  {cid[:12]}: {m.total_size / 2**20:.0f} MiB, dump {m.stats['dump_seconds']:.1f}s, "
              f"store {m.stats['upload_seconds']:.1f}s, taken {m.created_at - t_notice:.1f}s after the notice",
              flush=True)
    summary = [e for e in node.events() if e["kind"] == "final-checkpoints"]
    assert summary and summary[-1]["committed"] == n_jobs, summary
    print(f"mmbatchd's own count: {summary[-1]['seconds']:.1f}s, {summary[-1]['parallel']} at a time", flush=True)
    kinds = [e["kind"] for e in node.events()]
    assert kinds.count("freeze") == n_jobs and kinds.count("final-checkpoint") == n_jobs

    # Frozen jobs can still be removed promptly (SIGKILL, then a thaw).
    t0 = time.time()
    node.docker("rm", "-f", *names[:-1], timeout=120)
    assert time.time() - t0 < 30


def test_notice_without_termination_resumes_jobs(node_factory, imds_factory, busybox_image):
    imds = imds_factory()
    node = node_factory("grace", images=[busybox_image])
    node.write_config(imds=imds.url, grace=3, poll=0.3)
    node.start_mmbatchd()
    names = ["g0", "g1"]
    job_ids = [jobs.unique("grace0"), jobs.unique("grace1")]
    # 250 lines (25 s): room for the early and the final checkpoints on a loaded machine
    cids = [jobs.run_job(node, n, j, "-e", "LIMIT=250", image=busybox_image, argv=("sh", "-c", jobs.COUNTER))
            for n, j in zip(names, job_ids)]
    jobs.wait_for(lambda: all(len(jobs.counter_lines(node.logs(n))) >= 10 for n in names), 20, "the jobs to count")

    imds.schedule_rebalance()  # first a rebalance recommendation: an early checkpoint each, no freeze
    early = jobs.wait_for(lambda: (lambda ms: ms if all(ms) else None)([jobs.manifests(node, j) for j in job_ids]),
                          20, "the early checkpoints", node=node)
    assert [ms[0].labels["reason"] for ms in early] == ["rebalance", "rebalance"]
    assert [node.runtime_status(c) for c in cids] == ["running", "running"]

    imds.schedule_interruption(3)  # terminates in 3 s; it never happens: resume 3 s after that
    jobs.wait_for(lambda: all(final_marker(node, c) for c in cids), 20, "the final checkpoints", node=node)
    assert [node.runtime_status(c) for c in cids] == ["paused", "paused"]
    frozen_at = [len(jobs.counter_lines(node.logs(n))) for n in names]
    time.sleep(1.0)
    assert [len(jobs.counter_lines(node.logs(n))) for n in names] == frozen_at, "frozen jobs made progress"

    jobs.wait_for(lambda: not os.path.exists(os.path.join(node.state_dir, "interrupted")), 20,
                  "the jobs to be resumed", node=node)
    assert all(final_marker(node, c) is None for c in cids)
    for n in names:
        assert int(node.out("wait", n, timeout=60)) == 0
        lines = node.logs(n).splitlines()
        assert jobs.counter_lines("\n".join(lines)) == list(range(1, 251)), "one process, never restarted"
        assert len({ln.split()[1] for ln in lines}) == 1
    kinds = [e["kind"] for e in node.events()]
    for kind, count in (("rebalance-recommendation", 1), ("spot-interruption", 1), ("freeze", 2),
                        ("final-checkpoint", 2), ("resume", 2), ("spot-resume", 1)):
        assert kinds.count(kind) == count, (kind, kinds)
    for j in job_ids:  # succeeded after all: their checkpoints go
        jobs.wait_for(lambda j=j: not jobs.manifests(node, j), 30, "checkpoints of a succeeded job to go",
                      node=node)


def test_sigterm_finishes_final_checkpoints_and_a_restart_carries_on(node_factory, imds_factory, python_image):
    imds = imds_factory()
    node = node_factory("term", images=[python_image])
    node.write_config(imds=imds.url, grace=600, poll=0.3)
    node.start_mmbatchd()
    names = ["t0", "t1"]
    job_ids = [jobs.unique("term0"), jobs.unique("term1")]
    cids = [jobs.run_job(node, n, j, "-e", "MIB=256", image=python_image, argv=("python3", "-u", "-c", jobs.BIG_PYTHON))
            for n, j in zip(names, job_ids)]
    jobs.wait_for(lambda: all("ready" in node.logs(n) for n in names), 60, "the jobs to fill their memory",
                  interval=0.3, node=node)

    imds.schedule_interruption(120)
    jobs.wait_for(lambda: os.path.exists(os.path.join(node.state_dir, "interrupted")), 5, "the notice", node=node)
    assert not any(final_marker(node, c) for c in cids), "too fast to test a stop in the middle"
    assert node.stop_mmbatchd(timeout=150) == 0  # SIGTERM while the final checkpoints run
    stopped_at = time.time()
    finals = [final_marker(node, c) for c in cids]
    assert all(f and f[0]["status"] == "committed" and f[1] <= stopped_at for f in finals), finals
    log = node.daemon_log()
    assert "stopping: waiting for" in log
    assert [e["kind"] for e in node.events()].count("final-checkpoint") == 2
    assert [node.runtime_status(c) for c in cids] == ["paused", "paused"], "a stopping daemon leaves jobs frozen"

    # A restarted daemon carries on with the interruption: no second final checkpoint.
    node.start_mmbatchd()
    jobs.wait_for(lambda: "an interruption is in progress" in node.daemon_log(), 10, "the restart", node=node)
    time.sleep(2.0)
    assert [len(jobs.manifests(node, j)) for j in job_ids] == [1, 1]
    assert [node.runtime_status(c) for c in cids] == ["paused", "paused"]
    node.docker("rm", "-f", *names, timeout=60)
