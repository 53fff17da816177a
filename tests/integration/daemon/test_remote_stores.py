"""Checkpoint and restore through the runtime with the node's store on S3 or JuiceFS.

Each test runs a private node (its own dockerd, tests/integration/daemon/node.py)
whose config.toml names the store, as install.sh would write it: an
`s3://bucket/prefix` URL with the local S3-compatible server as endpoint and
credentials from the environment (the default chain), or a JuiceFS mount
over that server used as a file:// store. Checkpoints are taken with the
`mmbatch checkpoint` CLI and restored by the runtime at the retry's create.
Sizes are counted at the server (the bucket's object sizes), never from
mmbatch's own statistics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator

import pytest

from tests.conftest import unavailable
from tests.integration import jobs as host_jobs
from tests.integration.daemon import daemon_jobs as jobs
from tests.integration.daemon import memjob
from tests.integration.daemon.node import Node
from tests.lib import juicefs, s3server

pytestmark = [pytest.mark.docker, pytest.mark.criu, pytest.mark.root, pytest.mark.slow]

MiB = 1024 * 1024


@dataclass
class RemoteStore:
    kind: str
    url: str
    settings: Dict[str, object] = field(default_factory=dict)
    env: Dict[str, str] = field(default_factory=dict)
    bytes_stored: Callable[[], int] = lambda: 0


def s3_env(server: s3server.S3Server, secret: str = "") -> Dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": secret or server.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1"}


def s3_remote(server: s3server.S3Server, bucket: str, **settings: object) -> RemoteStore:
    return RemoteStore("s3", f"s3://{bucket}/ckpt", {"endpoint_url": server.endpoint, "region": "us-east-1",
                                                     **settings},
                       s3_env(server), lambda: server.bucket_bytes(bucket))


@pytest.fixture(params=["s3", "juicefs"])
def remote(request, s3_server, bucket) -> Iterator[RemoteStore]:
    if request.param == "s3":
        yield s3_remote(s3_server, bucket)
        return
    why = juicefs.unavailable_reason()
    if why:
        unavailable(why)
    fs = juicefs.mount_over(s3_server, bucket)
    try:
        yield RemoteStore("juicefs", f"file://{fs.mountpoint}/ckpt",
                          bytes_stored=lambda: s3_server.bucket_bytes(bucket))
    finally:
        fs.cleanup()


def remote_node(node_factory, remote: RemoteStore, images, name: str = "remote") -> Node:
    return node_factory(name, images=images, extra_env=remote.env, store_url=remote.url,
                        store_settings=remote.settings, spot_enabled=False)


def cli_checkpoint(node: Node, cid: str, env: Dict[str, str] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmbatch.cli", "--config", node.config, "checkpoint", cid, "--json"],
                          capture_output=True, text=True, timeout=600, env={**node.env(), **(env or {})})


def checkpoint_ok(node: Node, cid: str) -> Dict[str, object]:
    proc = cli_checkpoint(node, cid)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def node_repo(node: Node, job_id: str, monkeypatch, remote: RemoteStore):
    for k, v in remote.env.items():
        monkeypatch.setenv(k, v)
    return jobs.repo(node, job_id)


def test_killed_job_continues_from_the_node_store(node_factory, remote, busybox_image, monkeypatch):
    node = remote_node(node_factory, remote, [busybox_image])
    vol = os.path.join(node.dir, "vol")
    os.makedirs(vol)
    job_id = jobs.unique(f"remote-{remote.kind}")
    before = remote.bytes_stored()

    cid1 = jobs.run_job(node, "a1", job_id, "-v", f"{vol}:/data", image=busybox_image,
                        argv=("sh", "-c", host_jobs.COUNTER), attempt=1)
    jobs.wait_for(lambda: len(host_jobs.parse_lines(node.logs("a1"))) >= 10, 30, "ten lines")
    node.docker("pause", "a1")
    time.sleep(0.4)
    last = host_jobs.parse_lines(node.logs("a1"))[-1]
    result = checkpoint_ok(node, cid1)
    node.docker("unpause", "a1")
    assert remote.bytes_stored() - before >= result["bytes_uploaded"] > 0, "the checkpoint is in the bucket"
    time.sleep(0.5)
    node.docker("kill", "a1")
    node.docker("wait", "a1", check=False)

    cid2 = jobs.run_job(node, "a2", job_id, "-v", f"{vol}:/data", image=busybox_image,
                        argv=("sh", "-c", host_jobs.COUNTER), attempt=2)
    lines = jobs.wait_for(lambda: (lambda ls: ls if len(ls) >= 3 else None)(host_jobs.parse_lines(node.logs("a2"))),
                          60, "the retry's output")
    assert lines[0] == (last[0] + 1, last[1], last[2]), (last, lines[:3])  # same process, same nonce
    host_jobs.assert_consecutive(host_jobs.volume_counts(vol))

    repo = node_repo(node, job_id, monkeypatch, remote)
    assert [m.checkpoint_id for m in repo.list()] == [result["checkpoint_id"]]
    restores = [e for e in repo.list_records("events") if e["kind"] == "restore"]
    assert [(e["container_id"], e["checkpoint_id"]) for e in restores] == [(cid2, result["checkpoint_id"])]
    if remote.kind == "juicefs":  # a file store on the mount: the manifest is a file there
        mnt = remote.url[len("file://"):]
        assert any(f.endswith(f"{result['checkpoint_id']}.json") for f in host_jobs.store_files(mnt))


def test_second_checkpoint_uploads_only_what_the_job_rewrote(node_factory, s3_server, bucket, python_image,
                                                              monkeypatch):
    """A job rewrites 10% of a 1 GiB buffer in scattered 1 MiB blocks between two checkpoints:
    the second adds at most 15% of the first's bytes at the server, and the restored job finds
    every byte of its buffer."""
    # The default 256 KiB chunks, a quarter of the job's write grain: a 1 MiB block
    # that is not on the chunk grid costs at most 5 chunks (1.25 MiB).
    remote = s3_remote(s3_server, bucket)
    node = remote_node(node_factory, remote, [python_image])
    vol = os.path.join(node.dir, "vol")
    os.makedirs(vol)
    job_id = jobs.unique("dedup")
    argv = ("python3", "-c", memjob.MEMJOB)
    env = ("-e", "BUF_MIB=1024", "-e", "REWRITE_PCT=10", "-v", f"{vol}:/data")
    cid = jobs.run_job(node, "a1", job_id, *env, image=python_image, argv=argv, attempt=1)
    memjob.wait_ready(vol, 0, node=node, name="a1")

    b0 = remote.bytes_stored()
    first = checkpoint_ok(node, cid)
    b1 = remote.bytes_stored()
    gen1 = memjob.rewrite(vol, 1, node=node, name="a1")
    assert gen1["changed"] == 102
    second = checkpoint_ok(node, cid)
    b2 = remote.bytes_stored()
    added_first, added_second = b1 - b0, b2 - b1
    print(f"\nfirst checkpoint {added_first / MiB:.1f} MiB at the server, second {added_second / MiB:.1f} MiB "
          f"({100 * added_second / added_first:.1f}%); mmbatch counted {first['bytes_uploaded'] / MiB:.1f} and "
          f"{second['bytes_uploaded'] / MiB:.1f} MiB", flush=True)
    assert added_first >= 1024 * MiB
    assert added_second <= 0.15 * added_first
    assert added_second >= 0.09 * added_first, "the rewritten tenth must be stored"

    node.docker("kill", "a1")
    node.docker("wait", "a1", check=False)
    jobs.run_job(node, "a2", job_id, *env, image=python_image, argv=argv, attempt=2)
    report = memjob.verify(vol)
    assert report == {"gen": 1, "blocks": 1024, "bad": 0, "pid": report["pid"]}
    assert memjob.ready_lines(node, "a2") == [], "restored, not started again"
    repo = node_repo(node, job_id, monkeypatch, remote)
    restores = [e for e in repo.list_records("events") if e["kind"] == "restore"]
    assert [e["checkpoint_id"] for e in restores] == [second["checkpoint_id"]]


def test_server_killed_mid_upload(node_factory, python_image, tmp_path, monkeypatch):
    """The S3 server dies while a checkpoint uploads: the checkpoint fails with a clear
    error, the job runs on, the previous checkpoint stays whole; with the server back the
    next checkpoint works, and a retry restores from it."""
    server = s3server.new_server(str(tmp_path / "weed"))
    try:
        bucket = server.create_bucket()
        remote = s3_remote(server, bucket)
        node = remote_node(node_factory, remote, [python_image], name="midupload")
        vol = os.path.join(node.dir, "vol")
        os.makedirs(vol)
        job_id = jobs.unique("midupload")
        argv = ("python3", "-c", memjob.MEMJOB)
        env = ("-e", "BUF_MIB=384", "-e", "REWRITE_PCT=100", "-v", f"{vol}:/data")
        cid = jobs.run_job(node, "a1", job_id, *env, image=python_image, argv=argv, attempt=1)
        memjob.wait_ready(vol, 0, node=node, name="a1")
        first = checkpoint_ok(node, cid)
        memjob.rewrite(vol, 1, node=node, name="a1")  # every block new: the next upload is large

        base = remote.bytes_stored()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmbatch.cli", "--config", node.config, "checkpoint", cid, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=node.env())
        try:
            jobs.wait_for(lambda: proc.poll() is not None or remote.bytes_stored() > base + 32 * MiB, 120,
                          "the upload to start", interval=0.05)
            assert proc.poll() is None, "the checkpoint finished before the server could be killed"
            server.kill()
            out, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 1, (out, err)
        assert "unreachable" in err and job_id in err, err[-2000:]
        # the job was thawed and runs on
        assert node.runtime_status(cid) == "running"
        memjob.rewrite(vol, 2, node=node, name="a1")

        server.restart()
        repo = node_repo(node, job_id, monkeypatch, remote)
        assert [m.checkpoint_id for m in repo.list()] == [first["checkpoint_id"]], "the failed one is absent"
        repo.fetch(repo.latest(), str(tmp_path / "fetched"))  # whole: every chunk there and verified
        third = checkpoint_ok(node, cid)
        assert [m.checkpoint_id for m in repo.list()] == [third["checkpoint_id"], first["checkpoint_id"]]

        node.docker("kill", "a1")
        node.docker("wait", "a1", check=False)
        jobs.run_job(node, "a2", job_id, *env, image=python_image, argv=argv, attempt=2)
        report = memjob.verify(vol)
        assert (report["gen"], report["bad"]) == (2, 0), report
    finally:
        server.cleanup()


def test_wrong_credentials_mean_a_clear_error_and_a_cold_start(node_factory, s3_server, bucket, busybox_image):
    remote = s3_remote(s3_server, bucket)
    remote.env = s3_env(s3_server, secret="not-the-secret")
    node = remote_node(node_factory, remote, [busybox_image], name="badcreds")
    vol = os.path.join(node.dir, "vol")
    os.makedirs(vol)
    job_id = jobs.unique("badcreds")
    cid = jobs.run_job(node, "a1", job_id, "-v", f"{vol}:/data", image=busybox_image,
                       argv=("sh", "-c", host_jobs.COUNTER), attempt=1)
    jobs.wait_for(lambda: len(host_jobs.parse_lines(node.logs("a1"))) >= 5, 30, "five lines")
    proc = cli_checkpoint(node, cid)
    assert proc.returncode == 1
    assert "credentials" in proc.stderr.lower() or "signature" in proc.stderr.lower(), proc.stderr[-2000:]
    assert node.runtime_status(cid) == "running", "the job runs on"
    assert s3_server.bucket_bytes(bucket) == 0
    node.docker("kill", "a1")
    node.docker("wait", "a1", check=False)

    jobs.run_job(node, "a2", job_id, "-v", f"{vol}:/data", image=busybox_image,
                 argv=("sh", "-c", host_jobs.COUNTER), attempt=2)
    lines = jobs.wait_for(lambda: (lambda ls: ls if len(ls) >= 3 else None)(host_jobs.parse_lines(node.logs("a2"))),
                          60, "the retry's output")
    assert lines[0][0] == 1, "a cold start"


def test_corrupt_object_in_s3_is_caught_at_restore_and_the_previous_checkpoint_used(
        node_factory, s3_server, bucket, busybox_image, monkeypatch):
    remote = s3_remote(s3_server, bucket)
    node = remote_node(node_factory, remote, [busybox_image], name="corrupt")
    vol = os.path.join(node.dir, "vol")
    os.makedirs(vol)
    job_id = jobs.unique("corrupt")
    argv = ("sh", "-c", host_jobs.COUNTER)
    cid = jobs.run_job(node, "a1", job_id, "-v", f"{vol}:/data", image=busybox_image, argv=argv, attempt=1)
    marks = []
    for _ in range(2):
        jobs.wait_for(lambda: len(host_jobs.parse_lines(node.logs("a1"))) >= 5 + 5 * len(marks), 30, "more lines")
        node.docker("pause", "a1")
        time.sleep(0.4)
        marks.append((host_jobs.parse_lines(node.logs("a1"))[-1], checkpoint_ok(node, cid)["checkpoint_id"]))
        node.docker("unpause", "a1")
    node.docker("kill", "a1")
    node.docker("wait", "a1", check=False)

    repo = node_repo(node, job_id, monkeypatch, remote)
    (last_a, ck_a), (_last_b, ck_b) = marks
    only_newest = sorted(repo.get(ck_b).chunk_objects() - repo.get(ck_a).chunk_objects())
    assert only_newest
    key = f"{repo.prefix}/{only_newest[0]}"
    data = bytearray(repo.store.get_bytes(key))
    data[len(data) // 2:len(data) // 2 + 16] = b"\xde\xad\xbe\xef" * 4
    repo.store.put_bytes(key, bytes(data))  # same size, other bytes: the rot S3's own checksum cannot see

    jobs.run_job(node, "a2", job_id, "-v", f"{vol}:/data", image=busybox_image, argv=argv, attempt=2)
    lines = jobs.wait_for(lambda: (lambda ls: ls if len(ls) >= 2 else None)(host_jobs.parse_lines(node.logs("a2"))),
                          60, "the retry's output")
    assert lines[0] == (last_a[0] + 1, last_a[1], last_a[2]), "restored from the previous checkpoint"
    fallbacks = [e for e in repo.list_records("events") if e["kind"] == "restore-fallback"]
    assert any(e["checkpoint_id"] == ck_b and "sha256" in e["reason"] for e in fallbacks), fallbacks
